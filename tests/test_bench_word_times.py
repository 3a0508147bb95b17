"""bench.word_times: the word-length count behind its table."""

from __future__ import annotations

from backends.base import Word
from bench.word_times import count


def test_count_tells_instants_from_short_words():
    words = [Word(" a", 1.0, 1.0), Word(" b", 1.0, 1.05), Word(" c", 1.05, 1.3), Word(" d", 2.0, 2.01)]
    assert count(words, short=0.1) == {"words": 4, "zero_length": 2, "short": 3}
    assert count([], short=0.1) == {"words": 0, "zero_length": 0, "short": 0}
