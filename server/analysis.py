"""Speech analysis of a transcript: speaking time, pace, filler words and pauses.

:func:`analyze` is a pure function used for live sessions (through :class:`SessionAnalysis`,
a session listener that adds ``analysis`` to the ``stopped`` payload) and for uploaded files.

Speaking time comes from VAD speech spans where the stream produced them (the local pipeline
does), else from word times (a cloud stream has no VAD of ours), else it is unknown.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from backends.base import Final, Segment, Word
from server.protocol import join_finals

logger = logging.getLogger(__name__)

PAUSE_THRESHOLD = 1.0  # seconds of silence between speech that count as a pause

# Filler words and phrases per language, matched on whole lowercased words. Some are also
# ordinary words ("like" the verb, "bon" the adjective): counts are an upper bound, and
# Whisper tends to drop real hesitations ("um", "euh") from its output, so they are also a
# lower bound for those. See docs/OPERATIONS.md.
FILLERS: dict[str, tuple[str, ...]] = {
    "en": (
        "um", "umm", "uh", "uhm", "er", "erm", "ah", "hmm", "mm", "like", "you know", "i mean",
        "sort of", "kind of", "you see", "basically", "literally", "actually", "so yeah",
    ),
    "fr": (
        "euh", "heu", "hum", "ben", "bah", "bon ben", "genre", "du coup", "en fait", "tu vois",
        "vous voyez", "voilà", "quoi", "enfin bref", "disons",
    ),
    "es": (
        "eh", "em", "este", "pues", "o sea", "bueno", "en plan", "a ver", "digamos", "sabes",
        "vale", "tipo",
    ),
    "de": (
        "äh", "ähm", "öh", "öhm", "hm", "halt", "sozusagen", "quasi", "eigentlich", "irgendwie",
        "na ja", "weißt du",
    ),
}  # fmt: skip

# A number with its separators and letters ("10,000", "3.50", "3:30", "21st", "1990s") and a
# dotted abbreviation ("U.S.") are one word each: Whisper writes numbers as digits, and
# splitting them made words per minute run high on speech full of figures.
_WORD = re.compile(r"\d+(?:[.,:]\d+)*[^\W_]*|(?:[^\W\d_]\.){2,}|\w+(?:['’]\w+)*", re.UNICODE)

TranscriptItem = Word | Final | Segment | str


def analyze(
    items: Iterable[TranscriptItem],
    speech_spans: Sequence[tuple[float, float]],
    duration: float,
    language: str | None,
    pause_threshold: float = PAUSE_THRESHOLD,
    vad_from: float = 0.0,
) -> dict[str, Any]:
    """Analyse a transcript.

    ``items``: timed :class:`Word`\\ s, :class:`Final` events or :class:`Segment`\\ s (their
    words are used when present) or plain texts. ``speech_spans``: ``(start, end)`` seconds of
    speech from a VAD, possibly empty. ``duration``: seconds of audio. ``vad_from``: where the
    VAD began to run (a session that failed over from the cloud); word times stand in before.
    """
    texts, timed = _collect(items)
    transcript = join_finals(texts)
    tokens = tokenize(transcript)

    vad = _merge(_clip(speech_spans, duration), 0.0)
    # Where no VAD ran, speech runs are words closer together than a pause.
    unvoiced = [(s, min(e, vad_from)) for s, e in timed if s < vad_from] if vad else timed
    words = _merge(_clip(unvoiced, duration), pause_threshold)
    spans = _merge(sorted(vad + words), 0.0)
    source = "+".join(name for name, part in (("vad", vad), ("words", words)) if part) or "none"
    speaking = sum(end - start for start, end in spans) if spans else None
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    pauses = [g for g in gaps if g >= pause_threshold]

    fillers = count_fillers(tokens, language)
    return {
        "language": language,
        "duration": round(duration, 3),
        "speaking_time": None if speaking is None else round(speaking, 3),
        "speaking_time_source": source,
        "words": len(tokens),
        "words_per_minute": round(len(tokens) / speaking * 60, 1) if speaking else None,
        "fillers": None
        if fillers is None
        else {"total": sum(fillers.values()), "counts": dict(sorted(fillers.items(), key=lambda kv: -kv[1]))},
        "pauses": {
            "threshold": pause_threshold,
            "count": len(pauses),
            "longest": round(max(pauses), 3) if pauses else 0.0,
            "total": round(sum(pauses), 3),
        },
        "transcript": transcript,
    }


def tokenize(text: str) -> list[str]:
    """Lowercased words, punctuation dropped (apostrophes inside a word kept)."""
    text = unicodedata.normalize("NFC", text).lower()
    return [m.group(0).replace("’", "'") for m in _WORD.finditer(text)]


def count_fillers(tokens: Sequence[str], language: str | None) -> dict[str, int] | None:
    """Occurrences of each filler of ``language`` in ``tokens`` (longest phrase first, no
    overlaps); ``None`` when there is no list for the language."""
    phrases = FILLERS.get((language or "").split("-")[0].lower())
    if phrases is None:
        return None
    by_length = sorted({tuple(p.split()) for p in phrases}, key=len, reverse=True)
    counts: dict[str, int] = {}
    i = 0
    while i < len(tokens):
        for phrase in by_length:
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                key = " ".join(phrase)
                counts[key] = counts.get(key, 0) + 1
                i += len(phrase)
                break
        else:
            i += 1
    return counts


def _collect(items: Iterable[TranscriptItem]) -> tuple[list[tuple[str, bool]], list[tuple[float, float]]]:
    """Each item's (text, joins the previous one) and the times of its words."""
    texts: list[tuple[str, bool]] = []
    timed: list[tuple[float, float]] = []
    for item in items:
        if isinstance(item, str):
            texts.append((item, False))
        elif isinstance(item, Word):
            texts.append((item.text, False))
            timed.append((item.start, item.end))
        else:  # Final or Segment
            texts.append((item.text, isinstance(item, Final) and item.joins_previous))
            if item.words:
                timed.extend((w.start, w.end) for w in item.words)
            elif item.end > item.start:
                timed.append((item.start, item.end))
    return texts, timed


def _clip(spans: Iterable[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    limit = duration if duration > 0 else float("inf")
    clipped = [(max(0.0, float(s)), min(limit, float(e))) for s, e in spans]
    return sorted((s, e) for s, e in clipped if e > s)


def _merge(spans: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Union of sorted spans, also joining spans less than ``gap`` apart."""
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start - merged[-1][1] < max(gap, 1e-9):
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class SessionAnalysis:
    """Session listener: collects each session's finals (in session time) and puts
    :func:`analyze`'s result into the ``stopped`` payload as ``analysis``."""

    def __init__(self, pause_threshold: float = PAUSE_THRESHOLD) -> None:
        self.pause_threshold = pause_threshold
        self._finals: dict[str, list[Final]] = {}
        self._vad_from: dict[str, float] = {}  # session -> session time its VAD spans start
        self._lock = threading.Lock()

    def __call__(self, kind: str, session: Any, detail: Any) -> None:
        if kind == "started":
            with self._lock:
                self._finals[session.id] = []
        elif kind == "event" and isinstance(detail, Final):
            offset = session.offset  # stream time -> session time (non-zero after a failover)
            final = Final(
                text=detail.text,
                start=detail.start + offset,
                end=detail.end + offset,
                words=tuple(Word(w.text, w.start + offset, w.end + offset, w.probability) for w in detail.words),
                joins_previous=detail.joins_previous,  # "touch" + "tone" is one word
            )
            with self._lock:
                self._finals.setdefault(session.id, []).append(final)
        elif kind == "failover":
            # The local stream (with its VAD) takes over here; the cloud had no VAD of ours.
            with self._lock:
                self._vad_from[session.id] = session.offset
        elif kind == "stopped":
            with self._lock:
                finals = self._finals.pop(session.id, [])
                vad_from = self._vad_from.pop(session.id, 0.0)
            detail["analysis"] = analyze(
                finals, list(session.speech), session.duration, session.language, self.pause_threshold, vad_from
            )
            logger.debug("session=%s analysis: %s", session.id, detail["analysis"])
