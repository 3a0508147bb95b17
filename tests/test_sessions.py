"""The session manager on its own: slots, failures and the spans they cost, with scripted
streams instead of a model, so each path is exact and fast."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from backends.base import SAMPLE_RATE, BackendInfo, Event, Final, Stream, StreamingBackend, StreamOptions
from backends.errors import BackendFailure, CloudError, InvalidRequest, TranscriptionError
from server.app import create_app, get_context
from server.config import CloudOptions, Config
from server.sessions import SessionManager
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.timeout(60)

SECOND = np.zeros(SAMPLE_RATE, dtype=np.float32)
PCM_SECOND = b"\x00\x00" * SAMPLE_RATE


class ScriptedStream(Stream):
    """A stream whose feed and flush do what the test says."""

    def __init__(self, on_feed: Callable[[ScriptedStream], list[Event]] | None = None) -> None:
        self.on_feed = on_feed
        self.on_flush: Callable[[ScriptedStream], list[Event]] | None = None
        self.fed = 0  # samples
        self.feeds = 0
        self.committed = 0.0
        self.closed = False

    def feed(self, audio: np.ndarray) -> list[Event]:
        self.fed += len(audio)
        self.feeds += 1
        return self.on_feed(self) if self.on_feed else []

    def flush(self) -> list[Event]:
        return self.on_flush(self) if self.on_flush else []

    def close(self) -> None:
        self.closed = True

    @property
    def committed_until(self) -> float:
        return self.committed


class ScriptedBackend(StreamingBackend):
    def __init__(self, name: str, open_stream: Callable[[], Stream]) -> None:
        self.name = name  # type: ignore[misc]  # the registry's name it stands in for
        self._open = open_stream

    def info(self) -> BackendInfo:
        return BackendInfo(name=self.name, available=True, model="scripted", multilingual=False, languages=("en",))

    def open_stream(self, options: StreamOptions) -> Stream:
        return self._open()


class Recorder:
    """Stands in for Socket.IO's emit: what each session's room and owner were sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict, str]] = []
        self.on_error: Callable[[dict, str], None] | None = None
        self.joined: list[tuple[str, str]] = []  # (sid, room) the manager put in a room
        self.app = None

    def __call__(self, event: str, payload: dict, to: str) -> None:
        self.sent.append((event, payload, to))
        if event == "error" and self.on_error:
            self.on_error(payload, to)

    def named(self, event: str) -> list[dict]:
        return [payload for name, payload, _ in self.sent if name == event]


def manager_with(backend: ScriptedBackend, **config) -> tuple[SessionManager, Recorder]:
    app = create_app(Config(async_mode="threading", **config), backends={backend.name: backend})
    manager = get_context(app).sessions
    recorder = Recorder()
    manager.emit = recorder
    manager.join_room = lambda sid, room: recorder.joined.append((sid, room))
    recorder.app = app
    return manager, recorder


def lost_span(error: dict) -> tuple[float, float]:
    found = re.search(r"audio from ([\d.]+) s to ([\d.]+) s", error["message"])
    assert found, error["message"]
    return float(found[1]), float(found[2])


class SlowOpen:
    """Opens streams like a cloud handshake: blocked until released (other handlers run)."""

    def __init__(self) -> None:
        self.opening, self.release = threading.Event(), threading.Event()
        self.streams: list[ScriptedStream] = []

    def __call__(self) -> Stream:
        self.opening.set()
        self.release.wait(10)
        self.streams.append(ScriptedStream())
        return self.streams[-1]


def test_starts_still_opening_hold_their_slots():
    slow = SlowOpen()
    manager, _ = manager_with(ScriptedBackend("cloud", slow), max_sessions=1)
    outcome: list[object] = []
    first = threading.Thread(target=lambda: outcome.append(manager.start("a", {"backend": "cloud"})))
    first.start()
    assert slow.opening.wait(5)
    with pytest.raises(TranscriptionError) as busy:
        manager.start("b", {"backend": "cloud"})
    assert busy.value.code == "server_busy"
    with pytest.raises(InvalidRequest) as twice:  # the same connection, before its ready
        manager.start("a", {"backend": "cloud"})
    assert twice.value.code == "already_started"
    slow.release.set()
    first.join(5)
    (session,) = outcome
    assert manager.active() == [session] and session.owner == "a"
    manager.stop("a")
    assert session.done.wait(5)


def test_a_connection_that_closes_while_its_start_opens_gets_no_session():
    slow = SlowOpen()
    manager, _ = manager_with(ScriptedBackend("cloud", slow), max_sessions=1)
    errors: list[str] = []

    def start() -> None:
        try:
            manager.start("a", {"backend": "cloud"})
        except TranscriptionError as exc:
            errors.append(exc.code)

    starting = threading.Thread(target=start)
    starting.start()
    assert slow.opening.wait(5)
    manager.disconnect("a")  # a ping timeout during the handshake
    slow.release.set()
    starting.join(5)
    # Nobody could ever stop that session: it is not started, and its stream is closed.
    assert errors == ["not_started"] and slow.streams[0].closed
    assert manager.active() == []
    session = manager.start("b", {"backend": "cloud"})  # the slot is free
    manager.stop("b")
    assert session.done.wait(5)


def test_a_fatal_error_to_an_owner_that_disconnects_on_it_ends_the_session():
    """Sending to a client that missed its ping runs the disconnect handler on the sending
    task (Engine.IO does); the session must still end, and free its slot."""

    def failing_feed(stream: ScriptedStream) -> list[Event]:
        raise CloudError("connection lost (simulated)", code="cloud_connection_lost")

    manager, recorder = manager_with(
        ScriptedBackend("cloud", lambda: ScriptedStream(failing_feed)),
        max_sessions=1,
        cloud=CloudOptions(failover=False),
    )
    recorder.on_error = lambda payload, to: manager.disconnect(to)
    session = manager.start("a", {"backend": "cloud"})
    manager.audio("a", PCM_SECOND)
    assert session.done.wait(10), "the session never ended"
    (error,) = recorder.named("error")
    assert error["fatal"] and lost_span(error) == (0.0, 1.0)
    assert manager.active() == [] and len(recorder.named("stopped")) == 1


def test_finals_committed_before_a_failure_in_the_same_call_are_delivered():
    def feed(stream: ScriptedStream) -> list[Event]:
        # Once, in the batch that holds the second second: an utterance ends (a final), then
        # a decode fails.
        if stream.fed >= 2 * SAMPLE_RATE and stream.fed - 2 * SAMPLE_RATE < SAMPLE_RATE:
            failure = BackendFailure("decoding failed (simulated)")
            failure.events = [Final(text="Deactivated.", start=1.1, end=1.9)]
            stream.committed = 1.9
            raise failure
        return []

    manager, recorder = manager_with(ScriptedBackend("local", lambda: ScriptedStream(feed)))
    session = manager.start("a", {})
    manager.audio("a", PCM_SECOND)
    manager.audio("a", PCM_SECOND)
    manager.stop("a")
    assert session.done.wait(10)
    events = [(name, payload.get("text") or payload.get("code")) for name, payload, _ in recorder.sent]
    assert [e for e in events if e[0] in ("final", "error")] == [("final", "Deactivated."), ("error", "backend_error")]
    assert recorder.named("stopped")[0]["transcript"] == "Deactivated."


def test_a_failed_flush_reports_all_the_audio_not_yet_final():
    stream = ScriptedStream()

    def flush(stream: ScriptedStream) -> list[Event]:
        raise BackendFailure("decoding failed (simulated)")

    stream.on_flush = flush
    stream.committed = 1.25  # the last final ended here; the rest waits for the flush
    manager, recorder = manager_with(ScriptedBackend("local", lambda: stream))
    session = manager.start("a", {})
    for _ in range(3):
        manager.audio("a", PCM_SECOND)
    manager.stop("a")
    assert session.done.wait(10)
    (error,) = recorder.named("error")
    assert error["code"] == "backend_error" and error["session_id"] == session.id
    assert lost_span(error) == (1.25, 3.0)


def test_a_client_sending_long_chunks_is_not_taken_for_one_that_paused():
    # A client recording 0.5 s chunks sends one every 0.5 s: with --idle-final 0.5 the time
    # between two is not a pause (it was: every chunk boundary became a forced final, and
    # 1.2 s chunks at the default 1 s scored WER 0.33 instead of 0.04). Silence after the
    # last chunk still is.
    pauses: list[int] = []

    class Pausable(ScriptedStream):
        def pause(self) -> list[Event]:
            pauses.append(self.fed)
            return []

    manager, _ = manager_with(ScriptedBackend("local", Pausable), idle_final=0.5)
    session = manager.start("a", {})
    half = PCM_SECOND[: len(PCM_SECOND) // 2]
    for _ in range(4):
        manager.audio("a", half)
        time.sleep(0.5)
    assert pauses == []
    # Silence for more than the chunk's length and idle_final together (1 s): a pause. (Waited
    # for, not slept: a loaded machine runs the worker's poll late.)
    deadline = time.monotonic() + 5
    while not pauses and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pauses == [2 * SAMPLE_RATE]
    manager.stop("a")
    assert session.done.wait(5)


def test_a_stream_is_opened_under_its_sessions_id():
    # A cloud stream's own thread copies the opener's logging context: opened before the
    # session had an id, every line it logged (the reason the cloud failed) said "session=-".
    from server.logs import SESSION

    seen: list[str] = []

    def open_stream() -> Stream:
        seen.append(SESSION.get())
        return ScriptedStream()

    manager, _ = manager_with(ScriptedBackend("cloud", open_stream))
    session = manager.start("a", {"backend": "cloud"})
    assert seen == [session.id]
    manager.stop("a")
    assert session.done.wait(5)


# --- resuming after a dropped connection --------------------------------------------------


class Gate:
    """A feed that says one word per call and, once armed, waits to be let through: the
    test drops the connection while a final is being made."""

    def __init__(self) -> None:
        self.armed, self.waiting, self.through = False, threading.Event(), threading.Event()

    def __call__(self, stream: ScriptedStream) -> list[Event]:
        if self.armed:
            self.waiting.set()
            self.through.wait(10)
        end = stream.fed / SAMPLE_RATE
        return [Final(text=f"word{stream.feeds}", start=end - 0.5, end=end)]


def sent_to(recorder: Recorder, sid: str) -> list[tuple[str, object]]:
    sent = [(event, payload) for event, payload, to in recorder.sent if to == sid]
    return [(event, payload.get("segment_id", payload.get("code"))) for event, payload in sent]


def test_a_dropped_connection_leaves_its_session_for_the_client_to_resume():
    gate = Gate()
    manager, recorder = manager_with(ScriptedBackend("local", lambda: ScriptedStream(gate)), resume_grace=10)
    session = manager.start("a", {"sample_rate": 8000})
    token = manager.describe(session)["resume_token"]
    manager.audio("a", PCM_SECOND)  # 16000 frames at 8 kHz: 2 s
    while session.next_segment < 1:  # fed alone, not in one batch with the next chunk
        time.sleep(0.01)
    gate.armed = True
    manager.audio("a", PCM_SECOND)
    assert gate.waiting.wait(5)
    manager.disconnect("a", dropped=True)  # while the second word is being made
    gate.through.set()
    while session.next_segment < 2:
        time.sleep(0.01)
    assert session.state == "running" and not session.done.is_set()
    (listed,) = recorder.app.test_client().get("/api/status").get_json()["queue"]["sessions"]
    assert listed["session_id"] == session.id and listed["connected"] is False
    with pytest.raises(InvalidRequest) as wrong:
        manager.resume("b", {"session_id": session.id, "token": token[:-1] + "x"})
    assert wrong.value.code == "not_resumable"

    (first,) = [p for e, p, to in recorder.sent if e == "final" and p["segment_id"] == 0]
    manager.resume("b", {"session_id": session.id, "token": token, "after": first["seq"]})
    resumed = next(p for e, p, to in recorder.sent if e == "resumed")
    assert resumed["session_id"] == session.id and resumed["state"] == "running"
    # Counted in the client's frames, from which it sends again what never arrived.
    assert resumed["received"] == 2 * 16000 and resumed["duration"] == pytest.approx(4.0, abs=0.01)
    assert resumed["next_segment_id"] == 2
    # Only what the client lacks: the final made while it was away, after the last it has.
    assert sent_to(recorder, "b") == [("resumed", None), ("final", 1)]
    assert recorder.joined == [("b", session.room)]
    with pytest.raises(InvalidRequest) as gone:  # the old connection no longer owns it
        manager.audio("a", PCM_SECOND)
    assert gone.value.code == "not_started"
    gate.armed = False
    manager.audio("b", PCM_SECOND)
    manager.stop("b")
    assert session.done.wait(5)
    assert recorder.named("stopped")[0]["transcript"].startswith("word1 word2 word3")  # + the resampler's tail
    samples = scrape(recorder.app)
    assert value(samples, "livescribe_session_drops_total", event="dropped") == 1
    assert value(samples, "livescribe_session_drops_total", event="resumed") == 1


def test_a_session_not_resumed_in_time_ends_and_a_late_resume_still_gets_its_end():
    manager, recorder = manager_with(ScriptedBackend("local", lambda: ScriptedStream(Gate())), resume_grace=0.3)
    session = manager.start("a", {})
    token = manager.describe(session)["resume_token"]
    manager.audio("a", PCM_SECOND)
    while session.next_segment < 1:
        time.sleep(0.01)
    manager.disconnect("a", dropped=True)
    assert session.done.wait(5), "the grace ran out but the session went on"
    assert manager.active() == []
    # Back within the grace after the end: the finals after the client's last, and the end.
    manager.resume("b", {"session_id": session.id, "token": token})
    assert sent_to(recorder, "b") == [("resumed", None), ("final", 0), ("stopped", None)]
    assert recorder.named("resumed")[0]["state"] == "stopped"
    # That replay may be lost in a new drop: it can be had again, for as long as the grace.
    manager.resume("c", {"session_id": session.id, "token": token})
    assert sent_to(recorder, "c") == sent_to(recorder, "b")
    time.sleep(0.5)
    with pytest.raises(InvalidRequest) as late:
        manager.resume("e", {"session_id": session.id, "token": token})
    assert late.value.code == "not_resumable" and manager._ended == {}  # forgotten, audio and all


def test_a_clean_disconnect_or_no_grace_ends_the_session_at_once():
    for grace, dropped in ((30.0, False), (0.0, True)):
        manager, _ = manager_with(ScriptedBackend("local", lambda: ScriptedStream(Gate())), resume_grace=grace)
        session = manager.start("a", {})
        manager.audio("a", PCM_SECOND)
        manager.disconnect("a", dropped=dropped)
        assert session.done.wait(5)
        if grace:  # its end can still be fetched with the token, as a drop's can
            assert manager.resume("b", {"session_id": session.id, "token": session.resume_token}).state == "stopped"
        else:
            with pytest.raises(InvalidRequest) as late:
                manager.resume("b", {"session_id": session.id, "token": session.resume_token})
            assert late.value.code == "not_resumable"


def test_errors_while_the_owner_is_away_are_delivered_when_it_resumes():
    def failing_feed(stream: ScriptedStream) -> list[Event]:
        raise CloudError("connection lost (simulated)", code="cloud_connection_lost")

    failing = threading.Event()
    manager, recorder = manager_with(
        ScriptedBackend("cloud", lambda: ScriptedStream(lambda s: failing.wait(5) and failing_feed(s))),
        cloud=CloudOptions(failover=False),
        resume_grace=10,
    )
    session = manager.start("a", {"backend": "cloud"})
    manager.audio("a", PCM_SECOND)
    manager.disconnect("a", dropped=True)
    failing.set()
    assert session.done.wait(5)
    assert recorder.named("error") == []  # nobody to tell yet
    manager.resume("b", {"session_id": session.id, "token": session.resume_token})
    assert sent_to(recorder, "b") == [("resumed", None), ("error", "cloud_connection_lost"), ("stopped", None)]
    assert recorder.named("error")[0]["fatal"]


def test_a_resume_takes_the_session_from_a_connection_not_yet_noticed_dead():
    left: list[tuple[str, str]] = []
    manager, _ = manager_with(ScriptedBackend("local", lambda: ScriptedStream(Gate())))
    manager.leave_room = lambda sid, room: left.append((sid, room))
    session = manager.start("a", {})
    manager.audio("a", PCM_SECOND)
    with pytest.raises(InvalidRequest) as busy:  # a connection with a session of its own
        manager.resume("a", {"session_id": session.id, "token": session.resume_token})
    assert busy.value.code == "already_started"
    manager.resume("b", {"session_id": session.id, "token": session.resume_token})
    assert left == [("a", session.room)] and manager.session_of("b") is session
    assert manager.session_of("a") is None
    manager.disconnect("a", dropped=True)  # noticed at last: nothing happens to the session
    assert session.attached and session.state == "running"
    manager.stop("b")
    assert session.done.wait(5)


@pytest.mark.parametrize(
    "payload",
    [None, "abc", {"session_id": "x"}, {"session_id": "x", "token": 5}, {"session_id": "x", "token": "t", "after": -2}],
)
def test_a_malformed_resume_is_an_invalid_request(payload):
    manager, _ = manager_with(ScriptedBackend("local", lambda: ScriptedStream()))
    with pytest.raises(InvalidRequest) as bad:
        manager.resume("a", payload)
    assert bad.value.code == "invalid_request"


def test_audio_the_resampler_holds_back_is_counted_as_received():
    # A tiny chunk at 44.1 kHz can come out of the resampler as nothing yet: it is still
    # accepted (it comes out with the next chunk), so a resuming client must not send it again.
    manager, _ = manager_with(ScriptedBackend("local", lambda: ScriptedStream()))
    session = manager.start("a", {"sample_rate": 44100})
    manager.audio("a", b"\x00\x01" * 10)
    manager.audio("a", b"\x00\x01" * 4410)
    assert session.received == 4420
    manager.stop("a")
    assert session.done.wait(5)


def test_a_session_waiting_for_its_client_gives_its_slot_to_a_new_one():
    # A user whose connection dropped reloads the page: the new page has no token, and the
    # old session must not keep it out (server_busy) for the whole grace.
    manager, recorder = manager_with(ScriptedBackend("local", lambda: ScriptedStream(Gate())), max_sessions=1)
    old = manager.start("a", {})
    manager.audio("a", PCM_SECOND)
    while old.next_segment < 1:
        time.sleep(0.01)
    manager.disconnect("a", dropped=True)
    new = manager.start("b", {})
    # Finished before the new one runs: --max-sessions bounds the sessions decoding at once.
    assert old.done.is_set() and new.state == "running"
    with pytest.raises(TranscriptionError) as busy:  # a client that is here keeps its slot
        manager.start("c", {})
    assert busy.value.code == "server_busy"
    manager.resume("d", {"session_id": old.id, "token": old.resume_token})  # its end is kept
    assert sent_to(recorder, "d") == [("resumed", None), ("final", 0), ("stopped", None)]
    manager.stop("b")
    assert new.done.wait(5)


def test_a_refused_payload_counts_among_the_frames_a_resuming_client_has_sent():
    # The client numbers every frame it sends and sends again from `received` on: a refused
    # payload (its error said so) must not shift that, or accepted audio is sent twice.
    manager, _ = manager_with(ScriptedBackend("local", lambda: ScriptedStream()), max_payload_bytes=3200)
    session = manager.start("a", {})
    manager.audio("a", b"\x00\x00" * 1600)
    with pytest.raises(InvalidRequest) as big:
        manager.audio("a", b"\x00\x00" * 3200)
    assert big.value.code == "payload_too_large"
    manager.audio("a", b"\x00\x00" * 1600)
    assert session.received == 1600 + 3200 + 1600 and session.accepted == 3200
    manager.stop("a")
    assert session.done.wait(5)


def test_what_went_to_a_connection_not_yet_noticed_dead_is_replayed():
    # A silent drop is noticed a ping timeout late: meanwhile the owner is "attached", its
    # error and its session's end go into the void. Both reach the client that resumes.
    def failing_feed(stream: ScriptedStream) -> list[Event]:
        raise CloudError("connection lost (simulated)", code="cloud_connection_lost")

    manager, recorder = manager_with(
        ScriptedBackend("cloud", lambda: ScriptedStream(failing_feed)), cloud=CloudOptions(failover=False)
    )
    session = manager.start("a", {"backend": "cloud"})
    manager.audio("a", PCM_SECOND)
    assert session.done.wait(5)
    (error,) = recorder.named("error")  # sent to "a", which never got it
    manager.resume("b", {"session_id": session.id, "token": session.resume_token})
    assert sent_to(recorder, "b") == [("resumed", None), ("error", "cloud_connection_lost"), ("stopped", None)]
    # A client that has the error (its seq) is not sent it again.
    manager.resume("c", {"session_id": session.id, "token": session.resume_token, "after": error["seq"]})
    assert sent_to(recorder, "c") == [("resumed", None), ("stopped", None)]


def test_a_start_that_fails_does_not_cost_a_waiting_session_its_slot():
    opened: list[ScriptedStream] = []

    def open_stream() -> Stream:
        if opened:
            raise CloudError("key refused (simulated)", code="cloud_not_authorised")
        opened.append(ScriptedStream(Gate()))
        return opened[-1]

    manager, _ = manager_with(ScriptedBackend("cloud", open_stream), max_sessions=1)
    waiting = manager.start("a", {"backend": "cloud"})
    manager.disconnect("a", dropped=True)
    with pytest.raises(TranscriptionError) as refused:
        manager.start("b", {"backend": "cloud"})
    assert refused.value.code == "cloud_not_authorised"
    assert waiting.state == "running"  # its client may still come back
    manager.resume("c", {"session_id": waiting.id, "token": waiting.resume_token})
    manager.stop("c")
    assert waiting.done.wait(5)
