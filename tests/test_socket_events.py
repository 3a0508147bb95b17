"""Protocol v1 through the Flask-SocketIO test client, with the real model and real speech."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backends.base import DecoderBackend
from backends.errors import BackendFailure
from bench.wer import wer
from server.app import get_context
from server.config import Config
from tests.conftest import Fixture
from tests.streaming import (
    TestClientRecorder,
    assert_finals_well_formed,
    assert_partials_precede_finals,
    finals_text,
    wait_for_words_ending_after,
    words_ending_after,
)


def connect(socketio, app) -> TestClientRecorder:
    recorder = TestClientRecorder(socketio.test_client(app))
    recorder.wait_for("server_info")
    return recorder


def start(recorder: TestClientRecorder, **fields) -> dict:
    recorder.client.emit("start", fields)
    return recorder.wait_for("ready")[-1]


def error_codes(recorder: TestClientRecorder) -> list[str]:
    return [e["code"] for e in recorder.named("error")]


def test_server_info_describes_backends(socketio, app):
    info = connect(socketio, app).named("server_info")[0]
    assert info["protocol"] == 1
    assert info["idle_final"] == 1.0  # how soon a pause finalises (--idle-final)
    assert info["resume_grace"] == 30.0  # how long a dropped connection's session waits
    # A silently dead connection is noticed within 20 s (and then resumed by the page).
    assert (socketio.server.eio.ping_interval, socketio.server.eio.ping_timeout) == (10, 10)
    local = info["backends"]["local"]
    assert local["available"] and local["model"] == "tiny.en" and local["device"] == "cpu"
    assert info["backends"]["cloud"]["available"] is False
    assert info["backends"]["cloud"]["reason"]


@pytest.mark.slow
def test_replay_fixture_in_real_time_chunks(socketio, app, en00: Fixture):
    client = connect(socketio, app)
    ready = start(client, language="en")
    assert ready["backend"] == "local" and ready["model"] == "tiny.en"
    assert ready["device"] == "cpu" and ready["compute_type"] == "int8"
    assert ready["sample_rate"] == 16000 and ready["language"] == "en"
    assert len(ready["resume_token"]) >= 20  # only the sender gets it

    client.stream(en00.pcm, speed=2.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]

    finals = client.named("final")
    assert_finals_well_formed(finals)
    assert_partials_precede_finals(client.events)
    assert wer(en00.text, finals_text(finals)) < 0.15
    assert stopped["transcript"] == finals_text(finals)
    assert stopped["duration"] == pytest.approx(en00.duration, abs=0.05)
    # The last utterance runs to 57.7 s of a 59.9 s stream: its words are finalised.
    assert finals[-1]["end"] > en00.reference["utterances"][-1]["end"] - 1.5
    assert error_codes(client) == []


def test_stop_flushes_the_last_utterance(socketio, app, en00: Fixture):
    # The clip ends as "Please enter your phone number, starting with the area code." ends
    # (6.6-9.9 s): there is no trailing silence for the VAD, so only stop can finalise it.
    clip = en00.clip(9.95)
    client = connect(socketio, app)
    start(client, language="en")
    client.stream(clip.pcm, speed=4.0)
    client.client.emit("stop")
    client.wait_for("stopped", timeout=60)
    finals = client.named("final")
    assert_finals_well_formed(finals)
    last_words = [w for f in finals for w in f["words"] if w["end"] > 6.6]
    assert last_words, "nothing of the last utterance was finalised"
    assert max(w["end"] for w in last_words) > 9.0
    said = " ".join(w["word"] for w in last_words)
    assert wer(clip.reference["utterances"][-1]["text"], said) < 0.3


def test_a_client_that_pauses_gets_its_last_words_final_without_stop(socketio, app, en00: Fixture):
    # The client stops sending as "Please enter your phone number, starting with the area
    # code." ends (9.95 s): no silence follows for the VAD. The server finalises it once the
    # client has sent nothing for --idle-final (1 s), and the session goes on.
    clip = en00.clip(9.95)
    client = connect(socketio, app)
    start(client, language="en")
    client.stream(clip.pcm, speed=4.0)
    paused_at = time.monotonic()
    wait_for_words_ending_after(client, 9.0)
    final_at = next(e.at for e in client.events if e.name == "final" and e.data["words"][-1]["end"] > 9.0)
    assert final_at - paused_at >= 1.0  # not before the client had been quiet for --idle-final
    said = " ".join(w["word"] for f in client.named("final") for w in f["words"] if w["end"] > 6.6)
    assert wer(clip.reference["utterances"][-1]["text"], said) < 0.3
    assert [p for p in client.named("partial")][-1]["text"] == ""

    # Audio after the pause is transcribed as usual: nothing lost, nothing said twice.
    more = en00.clip(17.2)  # ... "Thank you for your patience" (15.4-16.8 s)
    client.stream(more.pcm[len(clip.pcm) :], speed=4.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    finals = client.named("final")
    assert_finals_well_formed(finals)
    assert wer(more.text, finals_text(finals)) < 0.2
    assert stopped["duration"] == pytest.approx(17.2, abs=0.05)
    assert error_codes(client) == []


@pytest.mark.parametrize("config", [Config(async_mode="threading", idle_final=0)])
def test_idle_final_off_leaves_the_last_words_to_stop(socketio, app, en00: Fixture):
    clip = en00.clip(9.95)
    client = connect(socketio, app)
    start(client, language="en")
    client.stream(clip.pcm, speed=4.0)
    time.sleep(3.0)
    assert not words_ending_after(client, 9.0)
    client.client.emit("stop")
    client.wait_for("stopped", timeout=60)
    assert words_ending_after(client, 9.0)


def test_silence_clip_gives_no_final(socketio, app, silence: Fixture):
    client = connect(socketio, app)
    start(client, language="en")
    client.stream(silence.pcm, speed=10.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=30)[0]
    assert client.named("final") == []
    assert [p for p in client.named("partial") if p["text"]] == []
    assert stopped["transcript"] == ""
    assert stopped["duration"] == pytest.approx(silence.duration, abs=0.05)


def test_watcher_in_room_receives_the_same_finals(socketio, app, en00: Fixture):
    owner = connect(socketio, app)
    watcher = connect(socketio, app)
    ready = start(owner, language="en", room="interview-42")
    assert ready["room"] == "interview-42"
    watcher.client.emit("join", {"room": "interview-42"})
    joined = watcher.wait_for("joined")[0]
    assert joined["sessions"] == [{"session_id": ready["session_id"], "backend": "local", "language": "en"}]

    owner.stream(en00.clip(17.0).pcm, speed=4.0)
    owner.client.emit("stop")
    owner.wait_for("stopped", timeout=60)
    watcher.wait_for("stopped", timeout=10)
    assert owner.named("final")
    assert watcher.named("final") == owner.named("final")
    # Watchers cannot send audio into the room.
    watcher.client.emit("audio", b"\x00\x00" * 160)
    assert error_codes(watcher) == ["not_started"]


def test_an_owner_leaves_the_room_with_its_session_a_watcher_stays(socketio, app, en00: Fixture):
    # Otherwise the next session someone starts in the room reaches the old owner as if it
    # were its own (a client that disconnects on `stopped` would drop its own new session).
    first, watcher, second = connect(socketio, app), connect(socketio, app), connect(socketio, app)
    start(first, language="en", room="desk-1")
    watcher.client.emit("join", {"room": "desk-1"})
    watcher.wait_for("joined")
    first.client.emit("stop")
    first.wait_for("stopped")
    watcher.wait_for("stopped")
    ready = start(second, language="en", room="desk-1")
    second.stream(en00.clip(3.0).pcm, speed=8.0)
    second.client.emit("stop")
    second.wait_for("stopped", timeout=60)
    watcher.wait_for("stopped", count=2, timeout=10)
    heard = [p for name in ("partial", "final", "stopped") for p in first.named(name)]
    assert heard and not [p for p in heard if p["session_id"] == ready["session_id"]]
    assert [e["session_id"] for e in watcher.named("stopped")][-1] == ready["session_id"]


def test_owner_disconnect_still_finalises_for_watchers(socketio, app, en00: Fixture):
    owner = connect(socketio, app)
    watcher = connect(socketio, app)
    ready = start(owner, language="en")
    watcher.client.emit("join", {"room": ready["room"]})
    watcher.wait_for("joined")
    owner.stream(en00.clip(9.3).pcm, speed=8.0)
    owner.client.disconnect()
    stopped = watcher.wait_for("stopped", timeout=60)[0]
    assert stopped["duration"] == pytest.approx(9.3, abs=0.05)
    assert (
        wer("Deactivated. Press 1 for Please enter your phone number, starting with the", stopped["transcript"]) < 0.35
    )


def test_resampled_float_input(socketio, app, en00: Fixture):
    clip = en00.clip(10.0).audio
    # 16 kHz -> 44.1 kHz float32 by linear interpolation: the server must bring it back.
    t_in = np.arange(len(clip)) / 16000
    t_out = np.arange(int(len(clip) * 44100 / 16000)) / 44100
    upsampled = np.interp(t_out, t_in, clip).astype("<f4")
    client = connect(socketio, app)
    ready = start(client, language="en", sample_rate=44100, encoding="pcm_f32le")
    assert ready["sample_rate"] == 44100 and ready["encoding"] == "pcm_f32le"
    client.stream(upsampled.tobytes(), speed=8.0, chunk=44100 * 4 // 10, bytes_per_second=44100 * 4)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    assert stopped["duration"] == pytest.approx(10.0, abs=0.05)
    reference = " ".join(u["text"] for u in en00.clip(10.0).reference["utterances"])
    assert wer(reference, stopped["transcript"]) < 0.2


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ("not an object", "invalid_request"),
        ({"colour": "blue"}, "invalid_request"),
        ({"backend": "telepathy"}, "unknown_backend"),
        ({"backend": "cloud"}, "backend_unavailable"),
        ({"language": "fr"}, "unsupported_language"),
        ({"language": "klingon!"}, "unsupported_language"),
        ({"task": "translate"}, "unsupported_task"),
        ({"task": "summarise"}, "unsupported_task"),
        ({"model": "large-v3"}, "unsupported_model"),
        ({"sample_rate": 1}, "invalid_sample_rate"),
        ({"sample_rate": 10_000_000}, "invalid_sample_rate"),
        ({"sample_rate": "fast"}, "invalid_sample_rate"),
        ({"sample_rate": 44100.5}, "invalid_sample_rate"),
        ({"sample_rate": float("nan")}, "invalid_sample_rate"),  # JSON from Python allows it
        ({"sample_rate": float("inf")}, "invalid_sample_rate"),
        ({"encoding": "mp3"}, "invalid_encoding"),
        ({"encoding": ["pcm_s16le"]}, "invalid_encoding"),
        ({"room": "../etc"}, "invalid_room"),
    ],
)
def test_bad_start_is_refused_with_a_code(socketio, app, fields, code):
    client = connect(socketio, app)
    client.client.emit("start", fields)
    client.wait_for("error")
    assert error_codes(client) == [code]
    assert client.named("ready") == []
    # The connection is still usable: a valid start works afterwards.
    assert start(client, language="en")["backend"] == "local"


def test_bad_audio_is_refused_and_the_session_survives(socketio, app, en00: Fixture):
    client = connect(socketio, app)
    other = connect(socketio, app)
    client.client.emit("audio", b"\x00\x01")
    client.client.emit("stop")
    client.wait_for("error", count=2)
    assert error_codes(client) == ["not_started", "not_started"]

    start(client, language="en")
    start(other, language="en")
    client.client.emit("start", {})  # twice
    client.client.emit("audio", b"\x01\x02\x03")  # odd byte count
    client.client.emit("audio", b"")  # empty
    client.client.emit("audio", "hello")  # text, not binary
    client.client.emit("audio", {"pcm": [1, 2]})  # an object
    client.client.emit("audio", b"\x00" * (get_context(app).config.max_payload_bytes + 2))
    client.wait_for("error", count=8)
    assert error_codes(client)[2:] == [
        "already_started",
        "invalid_audio",
        "invalid_audio",
        "invalid_audio",
        "invalid_audio",
        "payload_too_large",
    ]

    clip = en00.clip(10.0)
    client.stream(clip.pcm, speed=8.0)
    other.stream(clip.pcm, speed=8.0)
    client.client.emit("stop")
    other.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    other_stopped = other.wait_for("stopped", timeout=60)[0]
    reference = " ".join(u["text"] for u in clip.reference["utterances"])
    # Rejected payloads are not part of the session: exactly the clip was accepted.
    assert stopped["duration"] == pytest.approx(10.0, abs=0.01)
    assert wer(reference, stopped["transcript"]) < 0.2
    assert wer(reference, other_stopped["transcript"]) < 0.2
    assert error_codes(other) == []


def test_errors_about_audio_name_the_session(socketio, app):
    client = connect(socketio, app)
    session_id = start(client, language="en")["session_id"]
    client.client.emit("audio", b"\x01\x02\x03")  # odd byte count
    client.client.emit("audio", b"\x00\x01" * 1600, b"\x00\x01" * 1600)  # two arguments
    client.wait_for("error", count=2)
    errors = client.named("error")
    assert [(e["code"], e["session_id"]) for e in errors] == [
        ("invalid_audio", session_id),
        ("invalid_request", session_id),
    ]
    client.client.emit("stop")
    assert client.wait_for("stopped")[0]["duration"] == 0.0  # neither payload was accepted


def test_float_audio_with_nan_is_refused(socketio, app):
    client = connect(socketio, app)
    start(client, language="en", encoding="pcm_f32le")
    client.client.emit("audio", np.array([0.0, np.nan, 0.1, 0.2], dtype="<f4").tobytes())
    client.client.emit("audio", np.zeros(1601, dtype="<f4").tobytes()[:-2])  # not whole floats
    client.wait_for("error", count=2)
    assert error_codes(client) == ["invalid_audio", "invalid_audio"]
    client.client.emit("audio", np.zeros(1600, dtype="<f4").tobytes())
    client.client.emit("stop")
    assert client.wait_for("stopped")[0]["duration"] == pytest.approx(0.1, abs=0.001)


def test_max_sessions_refuses_politely(local_backend):
    from server.app import create_app

    app = create_app(Config(async_mode="threading", max_sessions=1), backends={"local": local_backend})
    socketio = get_context(app).socketio
    first, second = connect(socketio, app), connect(socketio, app)
    start(first, language="en")
    second.client.emit("start", {"language": "en"})
    second.wait_for("error")
    assert error_codes(second) == ["server_busy"]
    first.client.emit("stop")
    first.wait_for("stopped")
    assert start(second, language="en")["backend"] == "local"
    second.client.emit("stop")
    second.wait_for("stopped")


def test_ping_answers_with_server_time(socketio, app):
    client = socketio.test_client(app)
    ack = client.emit("ping", {}, callback=True)
    assert isinstance(ack["server_time"], float)


def test_leave_and_join_validation(socketio, app):
    client = connect(socketio, app)
    client.client.emit("join", {"room": ""})
    client.client.emit("join", "room")
    client.wait_for("error", count=2)
    assert error_codes(client) == ["invalid_room", "invalid_room"]
    client.client.emit("join", {"room": "abc"})
    client.client.emit("leave", {"room": "abc"})
    assert client.wait_for("left")[0] == {"room": "abc"}


class FailingOnce(DecoderBackend):
    """The real model, except that one decode fails (a CUDA OOM, a driver hiccup...)."""

    name = "local"

    def __init__(self, backend, fail_on: int) -> None:
        self.backend, self.fail_on, self.calls = backend, fail_on, 0

    def info(self):
        return self.backend.info()

    def decode(self, audio, options):
        self.calls += 1
        if self.calls == self.fail_on:
            raise BackendFailure("decoding failed: CUDA out of memory (simulated)")
        return self.backend.decode(audio, options)

    def transcribe(self, audio, options):
        return self.backend.transcribe(audio, options)


def test_a_failed_decode_is_reported_and_the_session_goes_on(local_backend, en00: Fixture):
    from server.app import create_app

    app = create_app(Config(async_mode="threading"), backends={"local": FailingOnce(local_backend, fail_on=3)})
    client = connect(get_context(app).socketio, app)
    start(client, language="en")
    clip = en00.clip(17.0)
    client.stream(clip.pcm, speed=4.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    errors = client.named("error")
    assert [(e["code"], e["fatal"]) for e in errors] == [("backend_error", False)]
    assert "was not transcribed" in errors[0]["message"] and errors[0]["session_id"]
    # The session went on: the phrases after the failure are transcribed (the failed window is
    # decoded again with the next audio, so little or nothing is lost).
    assert stopped["duration"] == pytest.approx(17.0, abs=0.01)
    later = " ".join(u["text"] for u in clip.reference["utterances"] if u["start"] > 6.0)
    # By word time: after a failed end-of-utterance decode the window goes on into the next
    # utterance, so one final can hold words from both sides of 6 s.
    words_after = [w["word"] for f in client.named("final") for w in f["words"] if w["start"] > 6.0]
    assert wer(later, " ".join(words_after)) < 0.2


def test_audio_racing_a_failure_is_refused_not_lost(socketio, app):
    """With native threads a chunk can pass the "running" check while a failure ends the
    session; the failure counts the audio accepted so far, so that chunk must be refused."""
    import threading

    from backends.errors import InvalidRequest

    recorder = connect(socketio, app)
    start(recorder, language="en")
    manager = get_context(app).sessions
    ((sid, session),) = manager._by_owner.items()
    held = threading.Lock()
    held.acquire()
    session.accepting = held  # the handler will wait here, as if the failure held it
    outcome: list[object] = []

    def send() -> None:
        try:
            manager.audio(sid, b"\x00\x01" * 1600)
            outcome.append("accepted")
        except InvalidRequest as exc:
            outcome.append(exc.code)

    accepted = session.accepted
    sender = threading.Thread(target=send)
    sender.start()
    sender.join(0.2)
    assert sender.is_alive(), "audio() did not wait for the lock"
    session.state = "stopping"  # what a fatal failure does while holding the lock
    held.release()
    sender.join(5)
    assert outcome == ["not_started"] and session.accepted == accepted
    session.state = "running"
    recorder.client.emit("stop")
    recorder.wait_for("stopped")
