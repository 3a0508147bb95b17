"""LocalAgreement-2: commit the words two consecutive hypotheses agree on.

Each decode of the growing window yields a hypothesis (timed words, absolute stream times).
A word is committed once the next hypothesis repeats it at the same position after the last
commit; what is not yet agreed is the partial. (Macháček et al., "Turning Whisper into
Real-Time Transcription System", 2023.)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from backends.base import Word

_STRIP = re.compile(r"[^\w']+", re.UNICODE)


def word_key(text: str) -> str:
    """Comparison key: case, accents of form and punctuation do not break an agreement."""
    return _STRIP.sub("", unicodedata.normalize("NFKC", text).lower())


def drop_repetitions(words: Sequence[Word], max_n: int = 6) -> list[Word]:
    """Cut decoder loops: an n-gram repeated back to back (3+ times, or twice for n >= 3).

    Whisper falls into loops on short or noisy input ("press 1 4 press 1 4 ..."); real speech
    rarely repeats a 3-word phrase immediately, and almost never a word three times.
    """
    keys = [word_key(w.text) for w in words]
    i = 0
    while i < len(keys):
        for n in range(1, max_n + 1):
            if i + 2 * n > len(keys):
                break
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == keys[i : i + n]:
                repeats += 1
            if (repeats >= 3 or (repeats >= 2 and n >= 3)) and any(keys[i : i + n]):
                return list(words[: i + n])
        i += 1
    return list(words)


class LocalAgreement:
    """The commit state of one utterance stream (times are absolute stream seconds)."""

    def __init__(self, tolerance: float = 0.1) -> None:
        self.tolerance = tolerance
        self.committed_end = 0.0  # end time of the last committed word
        self._recent: list[str] = []  # keys of the last committed words, for overlap removal
        self._previous: list[Word] = []  # the previous hypothesis' uncommitted words

    def _fresh(self, words: Sequence[Word]) -> list[Word]:
        """Drop words already committed: centred before the last commit, or the same n-gram.

        The midpoint, not the start: word timings move by 0.1-0.2 s between decodes, which
        is enough to push the start of the first new word before the commit boundary (it
        lost "urgent" in "remove the | urgent status"), but rarely a whole word's centre.
        """
        fresh = [w for w in words if (w.start + w.end) / 2 >= self.committed_end - self.tolerance / 2]
        # A word straddling the commit boundary may come back with a shifted start; if the
        # hypothesis begins with the last committed 1..5 words, those are repeats.
        keys = [word_key(w.text) for w in fresh]
        for n in range(min(5, len(self._recent), len(keys)), 0, -1):
            if keys[:n] == self._recent[-n:]:
                return fresh[n:]
        return fresh

    def insert(self, hypothesis: Sequence[Word]) -> list[Word]:
        """Add a hypothesis; return the newly committed words (possibly none)."""
        new = self._fresh(hypothesis)
        agreed = 0
        for old, cur in zip(self._previous, new, strict=False):
            if word_key(old.text) != word_key(cur.text):
                break
            agreed += 1
        committed = new[:agreed]
        self._previous = new[agreed:]
        self._commit(committed)
        return committed

    def commit_all(self, hypothesis: Sequence[Word]) -> list[Word]:
        """End of an utterance: commit everything new in ``hypothesis`` at once."""
        committed = self._fresh(hypothesis)
        self._previous = []
        self._commit(committed)
        return committed

    def commit_before(self, time: float) -> list[Word]:
        """Force-commit the pending words that end before ``time`` (window trimming)."""
        committed = [w for w in self._previous if w.end <= time]
        self._previous = self._previous[len(committed) :]
        self._commit(committed)
        return committed

    @property
    def pending(self) -> list[Word]:
        """The uncommitted words of the latest hypothesis (the partial)."""
        return list(self._previous)

    def reset_pending(self) -> None:
        self._previous = []

    def _commit(self, words: Sequence[Word]) -> None:
        if words:
            self.committed_end = max(self.committed_end, words[-1].end)
            self._recent = (self._recent + [word_key(w.text) for w in words])[-5:]
