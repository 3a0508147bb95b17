"""server.agreement: LocalAgreement-2 and repetition guards."""

from __future__ import annotations

from backends.base import Word
from server.agreement import LocalAgreement, drop_repetitions, word_key


def words(text: str, start: float = 0.0, step: float = 0.3) -> list[Word]:
    return [Word(" " + w, start + i * step, start + (i + 1) * step) for i, w in enumerate(text.split())]


def texts(ws: list[Word]) -> list[str]:
    return [w.text.strip() for w in ws]


def test_commits_the_common_prefix_of_two_hypotheses():
    agreement = LocalAgreement()
    assert agreement.insert(words("please enter your")) == []
    assert texts(agreement.pending) == ["please", "enter", "your"]
    committed = agreement.insert(words("please enter your phone number"))
    assert texts(committed) == ["please", "enter", "your"]
    assert texts(agreement.pending) == ["phone", "number"]
    # Only the agreed part of a revised tail is committed; the rest waits for a repeat.
    committed = agreement.insert(words("please enter your phone numbers please"))
    assert texts(committed) == ["phone"]
    assert texts(agreement.pending) == ["numbers", "please"]
    assert texts(agreement.insert(words("please enter your phone numbers please"))) == ["numbers", "please"]


def test_punctuation_and_case_do_not_break_agreement():
    agreement = LocalAgreement()
    agreement.insert([Word(" Hello,", 0, 0.4), Word(" world", 0.4, 0.8)])
    committed = agreement.insert([Word(" hello", 0, 0.4), Word(" World.", 0.4, 0.8)])
    assert texts(committed) == ["hello", "World."]  # the newer spelling wins


def test_words_before_the_last_commit_are_not_committed_twice():
    agreement = LocalAgreement()
    agreement.insert(words("one two three"))
    agreement.insert(words("one two three four"))
    # The window was trimmed: the next hypothesis starts mid-way, slightly re-timed.
    later = [Word(" three", 0.62, 0.9), Word(" four", 0.9, 1.2), Word(" five", 1.2, 1.5)]
    assert texts(agreement.insert(later)) == ["four"]  # "three" is older than the commit
    assert texts(agreement.insert(later)) == ["five"]


def test_ngram_overlap_with_the_last_commit_is_dropped():
    agreement = LocalAgreement()
    agreement.commit_all(words("thank you for calling"))
    # Same words, timed a little after the commit boundary (a shifted alignment).
    shifted = [Word(" for", 1.2, 1.5), Word(" calling", 1.5, 1.8), Word(" goodbye", 1.8, 2.1)]
    assert texts(agreement.commit_all(shifted)) == ["goodbye"]


def test_commit_before_forces_old_pending_words():
    agreement = LocalAgreement()
    agreement.insert(words("a b c d e f"))
    assert texts(agreement.commit_before(0.9)) == ["a", "b", "c"]
    assert texts(agreement.pending) == ["d", "e", "f"]
    assert abs(agreement.committed_end - 0.9) < 1e-9


def test_drop_repetitions_cuts_decoder_loops():
    looped = words("press 1 4 press 1 4 press 1 4")
    assert texts(drop_repetitions(looped)) == ["press", "1", "4"]
    stutter = words("the the the the end")
    assert texts(drop_repetitions(stutter)) == ["the"]
    natural = words("thank you thank you very much")  # a 2-gram said twice is normal speech
    assert drop_repetitions(natural) == natural
    assert drop_repetitions([]) == []


def test_word_key_ignores_case_and_punctuation():
    assert word_key(" Hello,") == word_key("hello") == "hello"
    assert word_key(" don't") == "don't"
    assert word_key(" ...") == ""
