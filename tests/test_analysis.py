"""Speech analysis: the pure function on known words and pauses, the model's word times, and
the ``analysis`` a live session's ``stopped`` carries."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from backends.base import DecodeOptions, Final, Word
from server.analysis import FILLERS, SessionAnalysis, analyze, count_fillers, tokenize
from tests.conftest import Fixture
from tests.streaming import TestClientRecorder


def reference_spans(fixture: Fixture) -> list[tuple[float, float]]:
    return [(u["start"], u["end"]) for u in fixture.reference["utterances"]]


def test_numbers_and_abbreviations_count_as_one_word():
    assert tokenize("We sold 10,000 units at $3.50 in the U.S. at 3:30, didn't we?") == [
        "we", "sold", "10,000", "units", "at", "3.50", "in", "the", "u.s.", "at", "3:30", "didn't", "we",
    ]  # fmt: skip
    assert tokenize("the 21st century, the 1990s, 5G at 4pm") == [
        "the",
        "21st",
        "century",
        "the",
        "1990s",
        "5g",
        "at",
        "4pm",
    ]


def test_known_words_and_pauses(en00: Fixture):
    # en-dev-00's first 15 s (from its JSON): utterances at 1.160-2.260, 4.167-5.317,
    # 6.606-9.886 and 11.109-14.009 s, so 8.43 s of speech and gaps of 1.907, 1.289, 1.223 s.
    clip = en00.clip(15.0)
    texts = [u["text"] for u in clip.reference["utterances"]]
    result = analyze(texts, reference_spans(clip), 15.0, "en")
    assert result["speaking_time_source"] == "vad"
    assert result["speaking_time"] == pytest.approx(8.43, abs=0.001)
    assert result["pauses"] == {"threshold": 1.0, "count": 3, "longest": 1.907, "total": pytest.approx(4.419)}
    # "De-activated." "Press 1 for" + two sentences of 10 words: 2 + 3 + 10 + 10.
    assert result["words"] == 25
    assert result["words_per_minute"] == pytest.approx(25 / 8.43 * 60, abs=0.1)
    assert result["fillers"] == {"total": 0, "counts": {}}
    assert result["transcript"] == " ".join(texts)
    assert result["duration"] == 15.0

    stricter = analyze(texts, reference_spans(clip), 15.0, "en", pause_threshold=1.25)
    assert stricter["pauses"]["count"] == 2 and stricter["pauses"]["longest"] == 1.907


def test_a_final_that_goes_on_with_a_word_joins_it():
    finals = [Final("Using your touch", 0.0, 1.0), Final("tone keypad.", 1.0, 2.0, joins_previous=True)]
    result = analyze(finals, [(0.0, 2.0)], 2.0, "en")
    assert result["transcript"] == "Using your touchtone keypad."
    assert result["words"] == 4


def test_whole_fixture_pauses_match_the_reference(en00: Fixture):
    spans = reference_spans(en00)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    result = analyze([en00.text], spans, en00.duration, "en", pause_threshold=0.5)
    assert result["pauses"]["count"] == sum(g >= 0.5 for g in gaps) > 10
    assert result["pauses"]["longest"] == pytest.approx(max(gaps), abs=0.001)
    assert result["speaking_time"] == pytest.approx(sum(e - s for s, e in spans), abs=0.01)


def test_fillers():
    text = "Um, so I, uh, you know, like, kind of liked it. I mean... UM! Sort-of. You knowing"
    counts = count_fillers(tokenize(text), "en")
    assert counts == {"um": 2, "uh": 1, "you know": 1, "like": 1, "kind of": 1, "i mean": 1, "sort of": 1}
    fr = count_fillers(tokenize("Euh, du coup, ben, c'est genre euh… bon ben voilà, quoi."), "fr")
    assert fr == {"euh": 2, "du coup": 1, "ben": 1, "genre": 1, "bon ben": 1, "voilà": 1, "quoi": 1}
    assert count_fillers(tokenize("Ähm, das ist halt so."), "de-DE") == {"ähm": 1, "halt": 1}
    assert count_fillers(tokenize("Pues, o sea, eh"), "es") == {"pues": 1, "o sea": 1, "eh": 1}
    assert count_fillers(tokenize("um"), "ja") is None
    assert count_fillers(tokenize("um"), None) is None
    assert {"en", "fr", "es", "de"} <= set(FILLERS)
    result = analyze([text], [(0.0, 6.0)], 6.0, "en")
    assert result["fillers"]["total"] == 8 and next(iter(result["fillers"]["counts"])) == "um"


def test_without_vad_speaking_time_comes_from_word_times():
    words = [
        Word(" One", 0.5, 0.9),
        Word(" two", 1.0, 1.4),
        Word(" three.", 1.5, 2.0),
        Word(" Four", 4.0, 4.4),  # 2 s after "three."
        Word(" five.", 4.5, 5.0),
    ]
    result = analyze(words, [], 6.0, "en")
    assert result["speaking_time_source"] == "words"
    assert result["speaking_time"] == pytest.approx(1.5 + 1.0)
    assert result["pauses"]["count"] == 1 and result["pauses"]["longest"] == 2.0
    assert result["words"] == 5 and result["words_per_minute"] == pytest.approx(5 / 2.5 * 60)

    nothing = analyze(["hello"], [], 3.0, "en")
    assert nothing["speaking_time"] is None and nothing["speaking_time_source"] == "none"
    assert nothing["words_per_minute"] is None and nothing["words"] == 1
    empty = analyze([], [], 0.0, None)
    assert empty["words"] == 0 and empty["pauses"]["count"] == 0 and empty["fillers"] is None


def test_model_word_times_find_the_reference_pauses(local_backend, en00: Fixture):
    """A file's analysis has no VAD spans: pauses come from Whisper's word times."""
    clip = en00.clip(30.0)
    result = local_backend.transcribe(clip.audio, DecodeOptions(language="en", word_timestamps=True))
    analysis = analyze(result.segments, [], clip.duration, "en")
    spans = reference_spans(clip)
    reference = analyze([clip.text], spans, clip.duration, "en")
    assert analysis["speaking_time_source"] == "words"
    assert analysis["speaking_time"] == pytest.approx(reference["speaking_time"], rel=0.25)
    assert abs(analysis["pauses"]["count"] - reference["pauses"]["count"]) <= 2
    assert abs(analysis["words"] - reference["words"]) <= 0.2 * reference["words"]


def test_listener_uses_session_time_and_final_words():
    """A cloud-like session (no VAD spans) that failed over: finals after the failover are
    in the new stream's time and must be shifted by the session's offset."""
    listener = SessionAnalysis()
    session = SimpleNamespace(id="s1", offset=0.0, speech=[], duration=12.0, language="en")
    listener("started", session, None)
    listener("event", session, Final("Hello there.", 0.5, 1.5, (Word(" Hello", 0.5, 0.9), Word(" there.", 0.9, 1.5))))
    session.offset = 5.0  # failover: the local stream's time 0 is session time 5 s
    listener("event", session, Final("Um, again.", 0.5, 1.5, (Word(" Um,", 0.5, 0.9), Word(" again.", 0.9, 1.5))))
    payload = {"session_id": "s1", "duration": 12.0, "transcript": "Hello there. Um, again."}
    listener("stopped", session, payload)
    analysis = payload["analysis"]
    assert analysis["transcript"] == payload["transcript"]
    assert analysis["pauses"]["count"] == 1 and analysis["pauses"]["longest"] == pytest.approx(4.0)
    assert analysis["speaking_time"] == pytest.approx(2.0)
    assert analysis["fillers"]["counts"] == {"um": 1}


def test_the_listener_joins_a_word_split_across_finals():
    # "touch" final, then "tone keypad." going on with it (joins_previous): one word, as in
    # stopped.transcript ("Using your touchtone keypad.").
    listener = SessionAnalysis()
    session = SimpleNamespace(id="s1", offset=0.0, speech=[], duration=3.0, language="en")
    listener("started", session, None)
    listener(
        "event",
        session,
        Final(
            "Using your touch", 0.2, 1.2, (Word(" Using", 0.2, 0.5), Word(" your", 0.5, 0.8), Word(" touch", 0.8, 1.2))
        ),
    )
    listener(
        "event",
        session,
        Final("tone keypad.", 1.2, 2.0, (Word("tone", 1.2, 1.4), Word(" keypad.", 1.4, 2.0)), joins_previous=True),
    )
    payload = {"session_id": "s1", "duration": 3.0, "transcript": "Using your touchtone keypad."}
    listener("stopped", session, payload)
    assert payload["analysis"]["transcript"] == payload["transcript"]
    assert payload["analysis"]["words"] == 4


def test_after_a_failover_the_cloud_part_counts_by_word_times():
    """Cloud first (no VAD), then the local stream from 5 s on: its VAD spans cover only that
    part, and the cloud's speech must not be left out of the speaking time."""
    listener = SessionAnalysis()
    session = SimpleNamespace(id="s2", offset=0.0, speech=[], duration=12.0, language="en")
    listener("started", session, None)
    listener("event", session, Final("Hello there.", 0.5, 1.5, (Word(" Hello", 0.5, 0.9), Word(" there.", 0.9, 1.5))))
    session.offset = 5.0
    listener("failover", session, None)
    listener("event", session, Final("Again.", 0.5, 1.0, (Word(" Again.", 0.5, 1.0),)))
    session.speech.append((5.3, 6.3))  # the local pipeline's VAD span, in session time
    payload = {"session_id": "s2", "duration": 12.0, "transcript": "Hello there. Again."}
    listener("stopped", session, payload)
    analysis = payload["analysis"]
    assert analysis["speaking_time_source"] == "vad+words"
    assert analysis["speaking_time"] == pytest.approx(1.0 + 1.0)
    assert analysis["pauses"]["count"] == 1 and analysis["pauses"]["longest"] == pytest.approx(3.8)
    # Without a failover a VAD'd session counts its VAD spans only.
    assert analyze(["x"], [(1.0, 2.0)], 3.0, "en")["speaking_time_source"] == "vad"


def test_stopped_carries_the_analysis(socketio, app, en00: Fixture):
    clip = en00.clip(15.0)
    client = TestClientRecorder(socketio.test_client(app))
    client.client.emit("start", {"language": "en"})
    client.wait_for("ready")
    client.stream(clip.pcm, speed=4.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    analysis = stopped["analysis"]
    assert analysis["transcript"] == stopped["transcript"]
    assert analysis["speaking_time_source"] == "vad"
    assert analysis["duration"] == pytest.approx(15.0, abs=0.05)
    # The VAD's spans hold the 8.43 s of reference speech plus some padding around it.
    assert 8.0 <= analysis["speaking_time"] <= 10.5
    assert 2 <= analysis["pauses"]["count"] <= 3 and 1.2 <= analysis["pauses"]["longest"] <= 1.91
    assert abs(analysis["words"] - 25) <= 5
    assert 100 < analysis["words_per_minute"] < 200
