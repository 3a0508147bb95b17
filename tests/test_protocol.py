"""server.protocol: the payload of a final and how finals join into a transcript."""

from __future__ import annotations

from backends.base import Final, Word
from server.protocol import final_payload, join_finals


def test_a_final_says_whether_it_goes_on_with_the_previous_ones_last_word():
    words = (Word("tone", 1.0, 1.4), Word(" keypad", 1.4, 2.0))
    rest = Final(text="tone keypad", start=1.0, end=2.0, words=words, joins_previous=True)
    payload = final_payload("s1", 3, rest, offset=10.0)
    assert payload["joins_previous"] is True
    assert payload["text"] == "tone keypad" and payload["start"] == 11.0
    assert [w["word"] for w in payload["words"]] == ["tone", "keypad"]
    assert final_payload("s1", 0, Final(text="Hello", start=0.0, end=0.5), 0.0)["joins_previous"] is False


def test_finals_join_with_a_space_except_where_one_goes_on_with_a_word():
    finals = [("Using your touch", False), ("tone keypad,", True), (" use the 7 ", False), ("", False)]
    assert join_finals(finals) == "Using your touchtone keypad, use the 7"
    assert join_finals([("-administrator", True)]) == "-administrator"  # nothing to join to
    assert join_finals([]) == ""
