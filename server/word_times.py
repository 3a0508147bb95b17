"""Word times a caption can use.

Whisper's word alignment collapses some words to an instant (with tiny.en on the held-out set,
1% of the stream's final words, 2% of an offline transcript's): a lone word, a first word
clamped to where the text before it ends, a word whose neighbour took its time. A zero-length
word is no use to a caption, a highlight or a speaking-time figure, so finals and file
transcripts show such a word widened toward a typical length (measured in docs/PIPELINE.md,
"Word times a caption can use"). Only the times shown change: the pipeline keeps decoded times
for its own comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from backends.base import Segment, Word

# A word timed shorter than this is given room.
MIN_WORD = 0.1


def _typical_length(word: Word) -> float:
    """Median length of tiny.en's words with as many letters: 0.24 s for two, 0.47 s for eight
    (offline word times on four held-out streams)."""
    return 0.15 + 0.035 * sum(c.isalnum() for c in word.text)


def _spare(word: Word, start: float, end: float) -> float:
    """What ``word``, shown over [start, end), holds beyond its typical length."""
    return max(0.0, end - start - _typical_length(word))


def given_room(words: list[Word], after: float, before: float | None) -> list[Word]:
    """``words`` (a final's, a segment's) as they are shown: none before ``after`` (where the
    text shown before them ends), and one timed shorter than ``MIN_WORD`` widened toward a
    typical length for its letters, into the free time around it and then into what a
    neighbour among ``words`` holds beyond its own typical length ("the" 2.42-3.02,
    "household" 3.02-3.02). ``before``: where the word after the last one starts (None: not
    known yet, so the last word does not grow forward)."""
    out: list[Word] = []
    for i, w in enumerate(words):
        left = out[-1].end if out else after
        start = max(w.start, left)
        end = max(w.end, start)
        if end - start < MIN_WORD:
            missing = _typical_length(w) - (end - start)
            room_before = start - left + (_spare(out[-1], out[-1].start, out[-1].end) if out else 0.0)
            if i + 1 < len(words):
                following = words[i + 1]
                free = max(0.0, following.start - end)
                room_after = free + _spare(following, end + free, following.end)
            else:
                room_after = 0.0 if before is None else max(0.0, before - end)
            # Half each way, what one side lacks from the other.
            ahead = min(missing - min(missing / 2, room_before), room_after)
            start, end = start - min(missing - ahead, room_before), end + ahead
            if out and start < out[-1].end:
                out[-1] = replace(out[-1], end=start)
        out.append(w if (start, end) == (w.start, w.end) else replace(w, start=start, end=end))
    return out


def shown_segments(segments: Sequence[Segment], duration: float) -> list[Segment]:
    """``segments`` with their words as a file transcript shows them (:func:`given_room`): a
    word may widen into the silence between segments, never into another segment's words, and
    a segment widens with its words."""
    shown: list[Segment] = []
    after = 0.0
    for i, segment in enumerate(segments):
        before = next((s.words[0].start for s in segments[i + 1 :] if s.words), duration)
        words = given_room(list(segment.words), after, before)
        if not words:
            shown.append(segment)
            continue
        after = words[-1].end
        # A segment spans its words, as it did before they were widened.
        start, end = min(segment.start, words[0].start), max(segment.end, words[-1].end)
        shown.append(replace(segment, start=start, end=end, words=tuple(words)))
    return shown
