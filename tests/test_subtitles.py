"""The txt/SRT/WebVTT/JSON writers, checked by parsing their output with independent libraries."""

from __future__ import annotations

import html
import json

import pytest
import srt
import webvtt

from backends.base import DecodeResult, Segment, Word
from server.subtitles import (
    CUE_LINES,
    FORMATS,
    LINE_CHARS,
    MIN_CUE_SECONDS,
    cues,
    render,
    timestamp,
    transcript_from_result,
)


def words_of(text: str, start: float, end: float) -> list[dict]:
    tokens = text.split()
    step = (end - start) / len(tokens)
    return [
        {"word": " " + t, "start": round(start + i * step, 3), "end": round(start + (i + 1) * step, 3)}
        for i, t in enumerate(tokens)
    ]


LONG = (
    "This segment is far too long to be shown as a single subtitle cue because it goes on and on"
    " for well over two lines of forty-two characters each, as Whisper segments often do."
)

# 82 characters, yet three lines when wrapped at 42 only at spaces.
THREE_LINES = "Please remember that the quarterly financial statements are due tomorrow afternoon"

TRANSCRIPT = {
    "language": "en",
    "duration": 4000.0,
    "segments": [
        {"start": 0.0, "end": 1.5, "text": "Hello there."},
        # Markup characters and an arrow inside the text, a blank line inside a segment.
        {"start": 1.5, "end": 3.0, "text": "If a < b && c > d --> then\n\nstop."},
        # A zero-length segment: a cue must still end after it starts.
        {"start": 3.0, "end": 3.0, "text": "Blip."},
        {"start": 3.2, "end": 20.0, "text": LONG, "words": words_of(LONG, 3.2, 20.0)},
        {"start": 21.0, "end": 35.0, "text": LONG},  # long, without word times
        {"start": 36.0, "end": 38.0, "text": THREE_LINES, "words": words_of(THREE_LINES, 36.0, 38.0)},
        {"start": 38.0, "end": 40.0, "text": THREE_LINES},
        {"start": 40.0, "end": 41.0, "text": "   "},  # nothing to show
        {"start": 3725.25, "end": 3727.0, "text": "Over an hour in."},
    ],
    "text": "",
}


def flat(text: str) -> str:
    return " ".join(text.split())


def expected_words() -> list[str]:
    return " ".join(s["text"] for s in TRANSCRIPT["segments"]).replace("-->", "->").split()


def test_timestamps():
    assert timestamp(0, ",") == "00:00:00,000"
    assert timestamp(3725.2504, ".") == "01:02:05.250"
    assert timestamp(59.9996, ",") == "00:01:00,000"
    assert timestamp(-0.2, ".") == "00:00:00.000"
    assert timestamp(400000.0, ",") == "111:06:40,000"


def check_cues(cues: list[tuple[float, float, str]]) -> None:
    """Cues in order, each with a positive duration and at most two lines of sane length."""
    previous_end = 0.0
    for start, end, text in cues:
        assert start >= previous_end - 1e-6
        assert end > start
        assert text.strip()
        lines = text.split("\n")
        assert all(line.strip() for line in lines)
        shown = [html.unescape(line) for line in lines]  # VTT escapes "<", "&", ">"
        assert len(shown) <= CUE_LINES and all(len(line) <= LINE_CHARS for line in shown), shown
        previous_end = end


def test_srt_parses_back():
    subtitles = list(srt.parse(render(TRANSCRIPT, "srt"), ignore_errors=False))
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1))
    check_cues([(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subtitles])
    assert " ".join(s.content for s in subtitles).split() == expected_words()
    assert subtitles[0].start.total_seconds() == 0.0 and subtitles[0].end.total_seconds() == 1.5
    assert subtitles[-1].start.total_seconds() == pytest.approx(3725.25)
    # The long segment with word times was split at word boundaries, on its word times.
    long_cues = [s for s in subtitles if 3.2 <= s.start.total_seconds() < 20.0]
    assert len(long_cues) >= 2
    assert long_cues[-1].end.total_seconds() == pytest.approx(20.0)
    # srt's own writer agrees with ours on the same cues.
    assert srt.compose(subtitles, reindex=False).split() == render(TRANSCRIPT, "srt").split()


def vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_vtt_parses_back():
    captions = list(webvtt.from_string(render(TRANSCRIPT, "vtt")))
    check_cues([(vtt_seconds(c.start), vtt_seconds(c.end), c.text) for c in captions])
    texts = [html.unescape(c.text) for c in captions]
    assert " ".join(texts).split() == expected_words()
    assert "&lt;" in captions[1].text and "<" not in captions[1].text  # escaped markup
    assert captions[0].start == "00:00:00.000" and captions[0].end == "00:00:01.500"
    assert captions[-1].start == "01:02:05.250"


def test_a_short_cue_stays_up_long_enough_to_be_read_unless_the_next_one_comes():
    # One-word utterances ("Extension.") can come with a word that ends where it starts.
    transcript = {
        "segments": [
            {"start": 1.0, "end": 1.0, "text": "Extension."},
            {"start": 5.0, "end": 5.3, "text": "Press"},
            {"start": 5.5, "end": 6.0, "text": "three."},
            {"start": 9.0, "end": 9.0, "text": "Goodbye."},
        ]
    }
    assert list(cues(transcript)) == [
        (1.0, 1.0 + MIN_CUE_SECONDS, "Extension."),
        (5.0, 5.5, "Press"),  # up until the next cue, not over it
        (5.5, 6.0 + (MIN_CUE_SECONDS - 0.5), "three."),
        (9.0, 9.0 + MIN_CUE_SECONDS, "Goodbye."),
    ]
    subtitles = list(srt.parse(render(transcript, "srt"), ignore_errors=False))
    assert [s.end.total_seconds() - s.start.total_seconds() for s in subtitles] == pytest.approx([0.8, 0.5, 0.8, 0.8])


def test_txt_and_json():
    lines = render(TRANSCRIPT, "txt").splitlines()
    assert lines[0] == "Hello there."
    assert " ".join(lines).split() == " ".join(s["text"] for s in TRANSCRIPT["segments"]).split()
    assert json.loads(render(TRANSCRIPT, "json")) == TRANSCRIPT
    assert set(FORMATS) == {"txt", "srt", "vtt", "json"}


def test_transcript_from_result():
    result = DecodeResult(
        segments=(
            Segment(" Hello world.", 0.5, 1.5, (Word(" Hello", 0.5, 0.9, 0.9), Word(" world.", 0.9, 1.5, 0.8))),
            Segment("  ", 1.5, 2.0),
            Segment(" Bye.", 2.0, 2.4),
        ),
        language="en",
        language_probability=1.0,
        duration=3.0,
    )
    plain = transcript_from_result(result)
    assert plain == {
        "language": "en",
        "duration": 3.0,
        "segments": [{"start": 0.5, "end": 1.5, "text": "Hello world."}, {"start": 2.0, "end": 2.4, "text": "Bye."}],
        "text": "Hello world. Bye.",
    }
    timed = transcript_from_result(result, words=True)
    assert [w["word"] for w in timed["segments"][0]["words"]] == [" Hello", " world."]
    assert timed["segments"][1]["words"] == []


def test_a_word_the_alignment_collapsed_is_given_room_in_the_json_words():
    # faster-whisper's offline alignment puts a segment's first word at one instant about 2%
    # of the time (27 of 1420 words on the held-out set): the JSON shows it a typical length.
    press, two = Word(" Press", 3.94, 3.94, 0.9), Word(" 2", 3.94, 4.24, 0.9)
    result = DecodeResult(
        segments=(Segment(" Press 2", 3.94, 4.24, (press, two)),),
        language="en",
        language_probability=1.0,
        duration=5.0,
    )
    (segment,) = transcript_from_result(result, words=True)["segments"]
    shown_press, shown_two = segment["words"]
    assert shown_press["end"] - shown_press["start"] == pytest.approx(0.325, abs=0.002)  # 0.15 s + 5 letters
    assert shown_press["end"] == shown_two["start"] and shown_two["end"] == 4.24
    assert (segment["start"], segment["end"]) == (shown_press["start"], 4.24)  # it spans its words
