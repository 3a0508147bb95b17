"""server.word_times: the word times finals and file transcripts show."""

from __future__ import annotations

import pytest

from backends.base import Segment, Word
from server.word_times import given_room, shown_segments


def test_given_room_widens_only_into_free_time_and_never_before_the_last_final():
    # A first word clamped to the last commit (at 5.0) grows forward only, up to the next word
    # (which, at 0.18 s for one letter, has no time to spare).
    press, three = given_room([Word(" Press", 5.0, 5.0), Word(" 3", 5.2, 5.38)], after=5.0, before=None)
    assert (press.start, press.end) == pytest.approx((5.0, 5.2)) and (three.start, three.end) == (5.2, 5.38)
    # With the next word unknown (None), a last word does not grow forward.
    (word,) = given_room([Word(" Press", 5.0, 5.0)], after=4.0, before=None)
    assert word.end == 5.0 and word.start == pytest.approx(5.0 - 0.325)
    # A word starting before the previous final's end starts at it.
    (word,) = given_room([Word(" hello", 4.8, 5.4)], after=5.0, before=6.0)
    assert (word.start, word.end) == (5.0, 5.4)
    # Words long enough, or with no free time around them and neighbours no longer than a
    # word of their letters (0.185 s for one), stay as they are.
    words = [Word(" a", 1.0, 1.18), Word(" b", 1.18, 1.18), Word(" c", 1.18, 1.36)]
    assert given_room(words, after=1.0, before=1.36) == words


def test_given_room_takes_time_from_a_neighbour_that_holds_more_than_its_letters_need():
    # The held-out set's two zero-length words after widening into free time: a neighbour in
    # the same final had taken their time.
    the, household = given_room([Word(" the", 2.42, 3.02), Word(" household", 3.02, 3.02)], after=2.0, before=3.02)
    assert (the.start, household.end) == (2.42, 3.02)
    assert the.end == household.start == pytest.approx(2.42 + 0.255)  # "the" keeps 0.255 s
    the, forwarded, message = given_room(
        [Word(" the", 29.19, 29.67), Word(" forwarded", 29.67, 29.67), Word(" message", 29.67, 30.37)],
        after=29.19,
        before=None,
    )
    assert (the.start, message.end) == (29.19, 30.37)
    assert the.end == forwarded.start and forwarded.end == message.start
    assert forwarded.end - forwarded.start == pytest.approx(0.465)  # 0.15 s + 9 letters
    assert the.end - the.start >= 0.255 - 1e-9 and message.end - message.start >= 0.395 - 1e-9
    # Never from the previous final: a first word only takes what is free or its follower's.
    (word,) = given_room([Word(" household", 3.02, 3.02)], after=3.02, before=3.02)
    assert (word.start, word.end) == (3.02, 3.02)


def segment(*words: Word) -> Segment:
    return Segment(text="".join(w.text for w in words), start=words[0].start, end=words[-1].end, words=words)


def test_a_file_transcript_widens_a_segments_first_word_into_the_silence_before_it():
    # faster-whisper's offline alignment (held-out set, en-heldout-10): "extension." ends at
    # 3.20, the next segment starts "Press" at 3.94-3.94, "2" 3.94-4.24.
    first = segment(Word(" extension.", 2.68, 3.20))
    second = segment(Word(" Press", 3.94, 3.94), Word(" 2", 3.94, 4.24))
    (extension,), (press, two) = (s.words for s in shown_segments([first, second], duration=5.0))
    assert extension == first.words[0]
    assert press.end - press.start == pytest.approx(0.325)  # 0.15 s + 5 letters
    assert 3.20 < press.start < 3.94 and press.end == two.start and two.end == 4.24
    assert two.end - two.start >= 0.185 - 1e-9


def test_a_file_transcript_never_widens_a_word_into_another_segments_words():
    first = segment(Word(" Goodbye.", 32.34, 32.34))
    second = segment(Word(" Press", 32.34, 32.80))
    third = segment(Word(" Local", 34.84, 34.84))
    (goodbye,), (press,), (local,) = (s.words for s in shown_segments([first, second, third], duration=34.84))
    # "Press" is the next segment's and keeps all its time: "Goodbye." grows back only.
    assert goodbye.end == 32.34 and goodbye.start == pytest.approx(32.34 - 0.395)
    assert press == second.words[0]
    # "Local" grows back into the silence after "Press" only (the audio ends where it does).
    assert local.end == 34.84 and local.start == pytest.approx(34.84 - 0.325)
