"""Transcript documents and their text formats: txt, SRT, WebVTT and JSON.

A *transcript* is the plain dict the HTTP API returns:
``{language, duration, segments: [{start, end, text, words?}], text}``; every writer takes one.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from backends.base import DecodeResult
from server.word_times import shown_segments

# Subtitle conventions: at most two lines of about 42 characters on screen at once.
LINE_CHARS = 42
CUE_LINES = 2
# A cue stays up at least this long unless the next one starts sooner (broadcast guides ask
# for about 5/6 s): a one-word utterance's alignment can end where it starts, and a 1 ms cue
# is never seen.
MIN_CUE_SECONDS = 0.8


@dataclass(frozen=True)
class Format:
    name: str
    extension: str
    content_type: str
    render: Callable[[dict], str]


def transcript_from_result(result: DecodeResult, words: bool = False) -> dict:
    """The JSON document for a decode result; ``words`` includes per-word timings (a word the
    alignment collapsed to an instant given room, :mod:`server.word_times`)."""
    segments = []
    for segment in shown_segments(result.segments, result.duration):
        text = segment.text.strip()
        if not text:
            continue
        item: dict = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": text}
        if words:
            item["words"] = [w.to_payload() for w in segment.words]
        segments.append(item)
    return {
        "language": result.language,
        "duration": round(result.duration, 3),
        "segments": segments,
        "text": " ".join(s["text"] for s in segments),
    }


def to_txt(transcript: dict) -> str:
    """One line per segment."""
    return "".join(f"{s['text'].strip()}\n" for s in transcript["segments"] if s["text"].strip())


def to_json(transcript: dict) -> str:
    return json.dumps(transcript, ensure_ascii=False, indent=2) + "\n"


def to_srt(transcript: dict) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, a blank line after each cue."""
    blocks = []
    for index, (start, end, text) in enumerate(cues(transcript), 1):
        blocks.append(f"{index}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: dict) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm`` times."""
    blocks = ["WEBVTT\n"]
    for start, end, text in cues(transcript):
        # Cue text is HTML-like: escape the characters the WebVTT parser treats as markup.
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        blocks.append(f"{timestamp(start, '.')} --> {timestamp(end, '.')}\n{text}\n")
    return "\n".join(blocks)


FORMATS: dict[str, Format] = {
    "txt": Format("txt", "txt", "text/plain; charset=utf-8", to_txt),
    "srt": Format("srt", "srt", "application/x-subrip; charset=utf-8", to_srt),
    "vtt": Format("vtt", "vtt", "text/vtt; charset=utf-8", to_vtt),
    "json": Format("json", "json", "application/json", to_json),
}


def render(transcript: dict, format_name: str) -> str:
    """The transcript in one of :data:`FORMATS`."""
    return FORMATS[format_name].render(transcript)


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<sep>mmm`` (hours may exceed 99: both formats allow more digits)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def cues(transcript: dict) -> Iterator[tuple[float, float, str]]:
    """Subtitle cues ``(start, end, text)``: segments longer than two lines are split at word
    boundaries (by word times when the segment has them); times strictly increase per cue,
    and a cue lasts ``MIN_CUE_SECONDS`` unless the next one starts sooner."""
    timed: list[tuple[float, float, str]] = []
    previous_end = 0.0
    for segment in transcript["segments"]:
        for start, end, text in _split(segment):
            start = max(start, previous_end)
            end = max(end, start + 0.001)  # a cue must end after it starts
            lines = _wrap(_one_line(text), LINE_CHARS) or [""]
            if not lines[0]:
                continue
            previous_end = end
            timed.append((start, end, "\n".join(lines)))
    for k, (start, end, text) in enumerate(timed):
        following = timed[k + 1][0] if k + 1 < len(timed) else float("inf")
        yield start, max(end, min(start + MIN_CUE_SECONDS, following)), text


def _wrap(text: str, width: int) -> list[str]:
    # Only at spaces: a subtitle must not cut "forty-two" or a URL in two.
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def _one_line(text: str) -> str:
    # A blank line would end the cue and "-->" would read as a timing line: flatten both.
    return " ".join(text.replace("-->", "->").split())


def _fits(text: str) -> bool:
    # Not a count of characters: wrapping only at spaces, 84 characters can need three lines.
    return len(_wrap(_one_line(text), LINE_CHARS)) <= CUE_LINES


def _split(segment: dict) -> list[tuple[float, float, str]]:
    text = _one_line(segment["text"])
    start, end = float(segment["start"]), float(segment["end"])
    if _fits(text):
        return [(start, end, text)]
    words = [w for w in segment.get("words") or () if w.get("word", "").strip()]
    if words:
        pieces, current = [], []
        for word in words:
            candidate = "".join(w["word"] for w in [*current, word]).strip()
            if current and not _fits(candidate):
                pieces.append(current)
                current = []
            current.append(word)
        pieces.append(current)
        return [(p[0]["start"], p[-1]["end"], "".join(w["word"] for w in p).strip()) for p in pieces]
    # No word times: share the segment's time among chunks in proportion to their length.
    chunks: list[str] = []
    for word in text.split():
        if chunks and _fits(f"{chunks[-1]} {word}"):
            chunks[-1] = f"{chunks[-1]} {word}"
        else:
            chunks.append(word)
    total = sum(len(c) for c in chunks)
    result, at = [], start
    for chunk in chunks:
        length = (end - start) * len(chunk) / total
        result.append((at, at + length, chunk))
        at += length
    return result
