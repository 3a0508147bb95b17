"""LocalAgreement-2: commit the words two consecutive hypotheses agree on.

Each decode of the growing window yields a hypothesis (timed words, absolute stream times).
A word is committed once the next hypothesis repeats it at the same position after the last
commit; what is not yet agreed is the partial. (Macháček et al., "Turning Whisper into
Real-Time Transcription System", 2023.)
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import Word, word_key


def drop_repetitions(words: Sequence[Word], keep: int = 0) -> list[Word]:
    """Cut decoder loops: an n-gram repeated back to back (3+ times, or twice for n >= 3).

    Whisper falls into loops on short or noisy input ("press 1 4 press 1 4 ..."); real speech
    rarely repeats a 3-word phrase immediately, and almost never a word three times. Loops can
    be long: a decode of a loaded server once wrote two sentences twice (21 words), the first
    copy aligned to one instant. The first ``keep`` words are already committed (the decoder's
    prefix): only a loop that reaches past them is cut, and never before them (after a forced
    prefix Whisper sometimes says the last sentence again: "patience. | Thank you for your
    patience."). Of the two copies, the one the audio better accounts for stays. Committed
    words said again with audio of their own are speech, not a loop (a repeated prompt).
    """
    keys = [word_key(w.text) for w in words]
    for i in range(len(keys)):
        for n in range(1, (len(keys) - i) // 2 + 1):
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == keys[i : i + n]:
                repeats += 1
            looping = repeats >= 3 or (repeats >= 2 and n >= 3)
            end = i + repeats * n
            if not looping or not any(keys[i : i + n]) or end <= keep:
                continue
            if i >= keep:  # a loop in the new words: one copy stays, and nothing after it
                first, second = list(words[i : i + n]), list(words[i + n : i + 2 * n])
                return list(words[:i]) + (second if _spoken(second) > 2 * _spoken(first) else first)
            at = i + (keep - i) // n * n  # the copy that holds the first new word, or starts it
            if at == keep:
                # The copies before ``keep`` are committed, whole. The new ones are either the
                # decoder saying committed text again (aligned to an instant: it has no audio
                # of its own) or the speaker saying it again (a prompt repeated, "can you hear
                # me?" twice): only the first kind is a loop, and the words after it are new
                # either way.
                spoken = _spoken(words[keep - n : keep])
                copies = [words[k : k + n] for k in range(keep, end, n)]
                if all(_spoken(copy) >= max(0.5 * spoken, 0.1 * n) for copy in copies):
                    continue
                return list(words[:keep]) + list(words[end:])
            if at + n >= end:  # only the last copy's end is new: nothing new is said twice
                continue
            # A copy goes on past the committed words and the next says it again.
            first, second = list(words[keep : at + n]), list(words[keep + n : at + 2 * n])
            return list(words[:keep]) + (second if _spoken(second) > 2 * _spoken(first) else first)
    return list(words)


def _spoken(words: Sequence[Word]) -> float:
    """Seconds of audio the words' alignment gives them: text the decoder wrote without
    audio behind it collapses onto one instant."""
    return sum(w.end - w.start for w in words)


def continues(previous: Word, word: Word) -> bool:
    """Whether ``word`` is the rest of ``previous``: Whisper's word splitting starts a new
    "word" at a punctuation token, so "non-administrator" comes as " non" + "-administrator"
    and "pre-pending" as " pre" + "-pending". Words of space-delimited text start with a
    space; in text without spaces (Chinese, Japanese) neither word does, and nothing joins.
    """
    return previous.text[:1].isspace() and not word.text[:1].isspace() and bool(word.text)


def whole_words(words: Sequence[Word], count: int) -> int:
    """The largest ``n <= count`` such that ``words[:n]`` does not end inside a word."""
    while 0 < count < len(words) and continues(words[count - 1], words[count]):
        count -= 1
    return count


class LocalAgreement:
    """The commit state of one utterance stream (times are absolute stream seconds).

    Hypotheses hold only the words after the last commit: the pipeline forces the committed
    text as the decoder's prefix, so the decoder writes nothing already committed and no
    time- or text-based de-duplication is needed (both used to drop real words: "connect
    you. | You have" lost "You").
    """

    def __init__(self) -> None:
        self.committed_end = 0.0  # end time of the last committed word
        self._previous: list[Word] = []  # the previous hypothesis' uncommitted words

    def insert(
        self,
        hypothesis: Sequence[Word],
        until: float | None = None,
        min_probability: float = 0.0,
        unsure_until: float | None = None,
    ) -> list[Word]:
        """Add a hypothesis; return the newly committed words (possibly none).

        ``until``: commit only agreed words that end by then (the newest words of a window
        are the least reliable, even when two decodes agree on them). ``min_probability``:
        an agreed word that either decode gave a lower probability stops the commit there
        (two decodes of one window share their mistakes; the decode at the pause hears more),
        unless it ends by ``unsure_until`` (so that speech without pauses still commits).
        """
        agreed = 0
        for old, cur in zip(self._previous, hypothesis, strict=False):
            if word_key(old.text) != word_key(cur.text) or (until is not None and cur.end > until):
                break
            unsure = min(old.probability, cur.probability) < min_probability
            if unsure and (unsure_until is None or cur.end > unsure_until):
                break
            agreed += 1
        # A final that ends inside a word would show "non -administrator" once the client
        # joins it to the next final.
        agreed = whole_words(hypothesis, agreed)
        committed = list(hypothesis[:agreed])
        self._previous = list(hypothesis[agreed:])
        self._commit(committed)
        return committed

    def commit_all(self, hypothesis: Sequence[Word] | None = None) -> list[Word]:
        """End of an utterance: commit ``hypothesis`` (default: the pending words) at once."""
        committed = list(self._previous if hypothesis is None else hypothesis)
        self._previous = []
        self._commit(committed)
        return committed

    def commit_before(self, time: float) -> list[Word]:
        """Force-commit the pending words that end before ``time`` (window trimming)."""
        count = whole_words(self._previous, sum(1 for w in self._previous if w.end <= time))
        committed = self._previous[:count]
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
