"""server.agreement: LocalAgreement-2 and repetition guards."""

from __future__ import annotations

from backends.base import Word, word_key
from server.agreement import LocalAgreement, drop_repetitions


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
    # The decoder continues after the committed words (they are its prefix): hypotheses
    # hold only new words. Only the agreed part of a revised tail is committed.
    committed = agreement.insert(words("phone numbers please", start=0.9))
    assert texts(committed) == ["phone"]
    assert texts(agreement.pending) == ["numbers", "please"]
    assert texts(agreement.insert(words("numbers please", start=1.2))) == ["numbers", "please"]
    assert abs(agreement.committed_end - 1.8) < 1e-9


def test_punctuation_and_case_do_not_break_agreement():
    agreement = LocalAgreement()
    agreement.insert([Word(" Hello,", 0, 0.4), Word(" world", 0.4, 0.8)])
    committed = agreement.insert([Word(" hello", 0, 0.4), Word(" World.", 0.4, 0.8)])
    assert texts(committed) == ["hello", "World."]  # the newer spelling wins


def test_agreed_words_too_close_to_the_audio_end_wait():
    agreement = LocalAgreement()
    agreement.insert(words("one two three four"))  # 0-1.2 s
    # Audio up to 1.3 s with a 1 s margin: only words ending by 0.3 s commit.
    assert texts(agreement.insert(words("one two three four five"), until=0.3)) == ["one"]
    assert texts(agreement.pending) == ["two", "three", "four", "five"]
    assert texts(agreement.insert(words("two three four five", start=0.3), until=1.0)) == ["two", "three"]


def test_an_agreed_word_either_decode_was_unsure_of_waits_with_the_words_after_it():
    def unsure(ws: list[Word], index: int, probability: float) -> list[Word]:
        ws[index] = Word(ws[index].text, ws[index].start, ws[index].end, probability)
        return ws

    agreement = LocalAgreement()
    # tiny.en heard "press 4 to place" as "press forward to place" (0.03) twice.
    agreement.insert(unsure(words("press forward to place"), 1, 0.5))
    committed = agreement.insert(unsure(words("press forward to place an"), 1, 0.03), min_probability=0.3)
    assert texts(committed) == ["press"]
    assert texts(agreement.pending) == ["forward", "to", "place", "an"]
    # An unsure word in the older of the two decodes holds the commit back too.
    agreement.insert(unsure(words("four to place an", start=0.3), 0, 0.2), min_probability=0.3)
    committed = agreement.insert(words("four to place an outgoing", start=0.3), min_probability=0.3)
    assert committed == []
    # Two confident decodes commit it; without a threshold nothing is held back.
    committed = agreement.insert(words("four to place an outgoing", start=0.3), min_probability=0.3)
    assert texts(committed) == ["four", "to", "place", "an", "outgoing"]
    agreement = LocalAgreement()
    agreement.insert(unsure(words("press forward"), 1, 0.03))
    assert texts(agreement.insert(unsure(words("press forward to"), 1, 0.03))) == ["press", "forward"]
    # An unsure word that ends by ``unsure_until`` commits: speech without pauses must not
    # hold everything after it back until the window overflows.
    agreement = LocalAgreement()
    agreement.insert(unsure(words("press forward to"), 1, 0.03))
    committed = agreement.insert(
        unsure(words("press forward to place"), 1, 0.03), min_probability=0.3, unsure_until=0.6
    )
    assert texts(committed) == ["press", "forward", "to"]  # "place": said once so far


def test_commit_all_commits_a_hypothesis_or_the_pending_words():
    agreement = LocalAgreement()
    agreement.insert(words("thank you for"))
    assert texts(agreement.commit_all()) == ["thank", "you", "for"]
    assert agreement.pending == []
    assert texts(agreement.commit_all(words("calling", start=0.9))) == ["calling"]
    assert abs(agreement.committed_end - 1.2) < 1e-9
    agreement.insert(words("goodbye", start=2.0))
    agreement.reset_pending()
    assert agreement.commit_all() == []


def test_commit_before_forces_old_pending_words():
    agreement = LocalAgreement()
    agreement.insert(words("a b c d e f"))
    assert texts(agreement.commit_before(0.9)) == ["a", "b", "c"]
    assert texts(agreement.pending) == ["d", "e", "f"]
    assert abs(agreement.committed_end - 0.9) < 1e-9


def test_a_commit_never_ends_inside_a_word():
    # Whisper splits "non-administrator" into " non" + "-administrator": committing " non"
    # alone made a final end mid-word, and the client showed "non -administrator".
    split = [Word(" all", 0.0, 0.3), Word(" non", 0.3, 0.6), Word("-administrator", 0.6, 1.2), Word(" users", 1.2, 1.5)]
    agreement = LocalAgreement()
    agreement.insert(split)
    assert texts(agreement.insert(split, until=0.9)) == ["all"]
    assert texts(agreement.insert(split[1:], until=1.5)) == ["non", "-administrator", "users"]
    agreement = LocalAgreement()
    agreement.insert(split)
    assert texts(agreement.commit_before(0.7)) == ["all"]
    assert texts(agreement.pending) == ["non", "-administrator", "users"]


def test_words_of_text_without_spaces_commit_one_by_one():
    # Chinese and Japanese words come without leading spaces: none continues another.
    chinese = [Word("你好", 0.0, 0.4), Word("世界", 0.4, 0.8), Word("朋友", 0.8, 1.2)]
    agreement = LocalAgreement()
    agreement.insert(chinese)
    assert texts(agreement.insert(chinese, until=0.8)) == ["你好", "世界"]


def test_drop_repetitions_cuts_decoder_loops():
    looped = words("press 1 4 press 1 4 press 1 4")
    assert texts(drop_repetitions(looped)) == ["press", "1", "4"]
    stutter = words("the the the the end")
    assert texts(drop_repetitions(stutter)) == ["the"]
    natural = words("thank you thank you very much")  # a 2-gram said twice is normal speech
    assert drop_repetitions(natural) == natural
    assert drop_repetitions([]) == []


def test_drop_repetitions_across_a_committed_prefix():
    # After a forced prefix Whisper sometimes says the last sentence again.
    # It has no audio of its own: the alignment puts it on one instant. The words after it
    # are new.
    prefix = words("thank you for your patience")
    again = [Word(w.text, 1.5, 1.5) for w in words("thank you for your patience")]
    new = words("please hold", start=1.5)
    assert drop_repetitions(prefix + again + new, keep=len(prefix)) == prefix + new
    assert drop_repetitions(prefix + new, keep=len(prefix)) == prefix + new
    # A speaker who says it again (a prompt repeated after a pause, "can you hear me?"
    # twice) is heard: every word of both copies stays.
    spoken_again = words("thank you for your patience", start=2.5)
    then = words("please hold", start=4.0)
    assert drop_repetitions(prefix + spoken_again + then, keep=len(prefix)) == prefix + spoken_again + then
    press = words("press 1 4")
    assert drop_repetitions(press + words("press 1 4", start=2.0), keep=3) == press + words("press 1 4", start=2.0)
    # A loop entirely inside the committed words is not the decoder's doing now: keep the rest.
    said = words("press 1 press 1 press 1")
    assert drop_repetitions(said + new, keep=len(said)) == said + new


def test_drop_repetitions_cuts_long_loops_and_keeps_the_copy_the_audio_accounts_for():
    # A 4-stream run on a loaded machine finalised this (en-dev-00, prefix "... Press four to
    # record"): the decoder wrote the rest of the phrase, said the whole sentence again, and
    # aligned the first copy to one instant.
    prefix = words("name. Press four to record", start=48.0)
    tail = "your temporary greeting. Press five to change your password. Press star to return to the main menu."
    collapsed = [Word(text=t, start=51.8, end=51.8, probability=0.5) for t in tail.split()]
    again = words("Press four to record")
    again = [Word(text=w.text, start=51.8, end=51.8, probability=0.5) for w in again]
    timed = words(tail, start=51.8, step=0.33)
    out = drop_repetitions(prefix + collapsed + again + timed, keep=len(prefix))
    assert texts(out) == texts(prefix) + tail.split()
    assert out[len(prefix) :] == timed  # the aligned copy, not the collapsed one
    # Both copies aligned: the first stays, everything after it goes.
    first, second = words("one two three four five six seven"), words("one two three four five six seven", 3)
    assert drop_repetitions(first + second + words("eight", 6)) == first
    # A long phrase said once, then new words: untouched.
    said = words("please enter the number to be removed from the list and then press the pound key")
    assert drop_repetitions(said) == said


def test_word_key_ignores_case_and_punctuation():
    assert word_key(" Hello,") == word_key("hello") == "hello"
    assert word_key(" don't") == "don't"
    assert word_key(" ...") == ""
