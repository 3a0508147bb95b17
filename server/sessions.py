"""Transcription sessions: one per ``start``, each with an ordered worker.

The Socket.IO handlers only validate, decode and enqueue audio (fast). Each session's worker
(a background task of the async mode) drains its queue and runs the blocking ``Stream.feed``
on a native thread via :class:`~server.runtime.Runtime`, then emits the resulting events to the
session's room. While it waits for audio it also takes what a stream produced on its own (a
cloud final, a dropped connection: ``Stream.poll``), so a client that pauses sending still hears
of it; and once the client has sent nothing for ``--idle-final`` it asks the stream to finalise
what it heard last (``Stream.pause``). Nothing accepted is dropped: a failure is either
recovered (cloud -> local failover, re-feeding the audio the cloud had not finalised) or
reported as an ``error`` that names the span of audio it affected.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from backends.base import (
    SAMPLE_RATE,
    Backend,
    DecoderBackend,
    Event,
    Final,
    LanguageDetected,
    Partial,
    SpeechActivity,
    Stream,
    StreamingBackend,
    StreamOptions,
)
from backends.errors import (
    BackendUnavailable,
    InvalidRequest,
    TranscriptionError,
)
from backends.registry import backend_class
from server.audio import AudioFormat, Resampler, decode_pcm
from server.config import Config
from server.logs import SESSION, in_session
from server.pipeline import StreamingPipeline
from server.protocol import (
    final_payload,
    join_finals,
    language_payload,
    parse_resume,
    parse_start,
    partial_payload,
)
from server.runtime import Runtime

logger = logging.getLogger(__name__)

_STOP = object()
# Audio a cloud stream has not finalised is kept for failover, up to this much.
MAX_RETAINED_SECONDS = 300.0
# How often a worker waiting for audio looks for what its stream produced by itself (a cloud
# final, a dropped connection) and whether the client has paused long enough (--idle-final):
# a client that pauses sending must still hear of all three.
POLL_INTERVAL = 0.1
# Room events (finals, language, failovers) a session keeps for a client that resumes it: a
# client is away for the resume grace plus the time a dead connection takes to be noticed
# (about a minute), far fewer finals than this.
REPLAY_EVENTS = 1000

Emit = Callable[[str, dict, str], None]  # (event, payload, to: room or sid)
RoomCall = Callable[[str, str], None]  # (sid, room): enter or leave a room


@dataclass
class Session:
    id: str
    owner: str  # Socket.IO sid of the connection that sends the audio
    room: str
    backend: str
    options: StreamOptions
    audio_format: AudioFormat
    stream: Stream
    resampler: Resampler
    queue: Any
    # Held while audio is accepted and while a failure ends the session: a chunk could otherwise
    # be accepted after the failure counted the audio, or refused before the failure's error was
    # sent. A lock of the async mode (Runtime.lock), since the failure emits while holding it.
    accepting: Any
    started_at: float = field(default_factory=time.time)
    state: str = "running"  # running -> stopping -> stopped
    accepted: int = 0  # samples (16 kHz) accepted into the queue
    processed: int = 0  # samples handed to the stream
    offset: float = 0.0  # session seconds where the current stream's time 0 lies
    next_segment: int = 0
    last_final_start: float = 0.0
    language: str | None = None
    finals: list[tuple[str, bool]] = field(default_factory=list)  # (text, joins_previous)
    speech: list[tuple[float, float]] = field(default_factory=list)
    # failover buffer: session audio from ``retained_from`` (samples) on
    retained: list[np.ndarray] = field(default_factory=list)
    retained_from: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    failed: bool = False  # a backend failure that could not be recovered ended the session
    last_audio: float = field(default_factory=time.monotonic)  # when audio was last accepted
    last_chunk: float = 0.0  # seconds of audio in that payload
    paused_at: int = 0  # ``processed`` when the stream was last told the client paused
    # --- resuming after a dropped connection (docs/PROTOCOL.md, "Resuming a session")
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    received: int = 0  # frames of the client's audio (at its own rate) accepted
    attached: bool = True  # False while the owner's connection is gone and a resume may come
    detachments: int = 0  # a grace timer stops its session only if no resume came since it began
    # What a resuming client may have missed: the room's finals, language and failover events
    # and the errors to the owner, numbered (``seq``, in their payloads too) so that a client
    # says the last one it has; the last partial; the ``stopped`` payload once it is over.
    seq: int = 0
    log: deque[tuple[int, str, dict]] = field(default_factory=lambda: deque(maxlen=REPLAY_EVENTS))
    partial: dict | None = None
    stopped: dict | None = None
    dropped_at: float = 0.0  # when its connection last dropped
    ended_at: float = 0.0
    # Held while sending to the room or the owner, and while a resume replays what was missed:
    # a final sent meanwhile would reach the resuming client before the ones replayed.
    emitting: Any = field(default_factory=threading.Lock)

    @property
    def duration(self) -> float:
        return self.accepted / SAMPLE_RATE

    @property
    def transcript(self) -> str:
        return join_finals(self.finals)


class SessionManager:
    """Owns every session of one server."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        runtime: Runtime,
        emit: Emit,
        leave_room: RoomCall | None = None,
        join_room: RoomCall | None = None,
    ) -> None:
        self.config = config
        self.backends = dict(backends)
        self.runtime = runtime
        self.emit = emit
        self.leave_room = leave_room
        self.join_room = join_room
        # (sid, room) a connection joined itself: it stays there when a session of its ends.
        self.watching: set[tuple[str, str]] = set()
        self._sessions: dict[str, Session] = {}
        self._by_owner: dict[str, Session] = {}
        # Sessions that ended while their owner was away, kept for ``resume_grace`` so that a
        # client coming back still gets their last finals and ``stopped``.
        self._ended: dict[str, Session] = {}
        # Connections whose ``start`` is opening a stream (it may block, and other handlers run
        # meanwhile), and whether each is still connected: they hold a slot of max_sessions.
        self._opening: dict[str, bool] = {}
        self.listeners: list[Callable[[str, Session, Any], None]] = []  # metrics, analysis hooks

    # --- queries -----------------------------------------------------------------------

    def active(self) -> list[Session]:
        return [s for s in self._sessions.values() if s.state != "stopped"]

    def session_of(self, sid: str) -> Session | None:
        return self._by_owner.get(sid)

    def in_room(self, room: str) -> list[Session]:
        return [s for s in self.active() if s.room == room]

    def backend_infos(self) -> dict[str, dict]:
        from backends.registry import backend_names

        infos = {}
        for name in backend_names():
            backend = self.backends.get(name)
            if backend is None:
                infos[name] = {"name": name, "available": False, "reason": "not configured on this server"}
            else:
                infos[name] = backend.info().to_payload()
        return infos

    def describe(self, session: Session) -> dict:
        """The ``ready`` payload of ``session`` (``resumed`` adds to it)."""
        backend = self.backends[session.backend].info()
        return {
            "session_id": session.id,
            "room": session.room,
            "backend": session.backend,
            "model": backend.model,
            "device": backend.device,
            "device_name": backend.device_name,
            "compute_type": backend.compute_type,
            "language": session.language or "auto",
            "task": session.options.task,
            "sample_rate": session.audio_format.sample_rate,
            "encoding": session.audio_format.encoding,
            "resume_token": session.resume_token,
        }

    # --- client requests (called from Socket.IO handlers: must not block) -----------------

    def start(self, sid: str, data: object) -> Session:
        """Validate a ``start``, open the stream, launch the worker; raises TranscriptionError."""
        current = self._by_owner.get(sid)
        if current is not None and current.state == "running":
            raise InvalidRequest(
                f"session {current.id} is already running on this connection; send stop first",
                code="already_started",
            )
        if sid in self._opening:
            raise InvalidRequest("a session is already starting on this connection", code="already_started")
        request = parse_start(data, "local", self.config.language)
        backend = self._backend(request.backend)
        info = backend.info()
        if request.model and request.model not in (info.model, self.config.local.model):
            raise InvalidRequest(
                f"model '{request.model}' is not loaded; this server runs '{info.model}'"
                " (start the server with --model to change it)",
                code="unsupported_model",
            )
        options = StreamOptions(language=request.language, task=request.task)
        backend.validate(options)
        gives_way = self._take_slot()
        # Opening may block (a cloud handshake): do it on a native thread. Other starts run
        # meanwhile, so the slot is taken before, and the connection may close before it opens.
        self._opening[sid] = True
        session_id = uuid.uuid4().hex
        try:
            # Under the session's id: a stream's own thread (the cloud's) logs with it.
            stream = self._call_blocking(in_session(session_id, self._open_stream), backend, options)
        finally:
            connected = self._opening.pop(sid)
        if not connected:
            try:
                self._call_blocking(stream.close)
            except Exception:
                logger.debug("closing a stream opened for a closed connection raised", exc_info=True)
            raise InvalidRequest("the connection closed while the session was starting", code="not_started")
        if gives_way is not None:  # only now: a start that fails must not cost it its session
            self._give_way(gives_way)
        session = Session(
            id=session_id,
            owner=sid,
            room=request.room or session_id,
            backend=backend.name,
            options=options,
            audio_format=request.audio,
            stream=stream,
            resampler=Resampler(request.audio.sample_rate),
            queue=self.runtime.queue(),
            accepting=self.runtime.lock(),
            emitting=self.runtime.lock(),
            # A backend that cannot detect the language (Speechmatics real-time) runs a session
            # without one in a language it assumes: ready says which, not "auto".
            language=request.language
            or getattr(stream, "assumed_language", None)
            or (None if info.multilingual else "en"),
        )
        self._sessions[session_id] = session
        self._by_owner[sid] = session
        self._notify("started", session, None)
        self.runtime.spawn(self._worker, session)
        logger.info(
            "session %s started: backend=%s language=%s room=%s rate=%d",
            session_id,
            backend.name,
            request.language or "auto",
            session.room,
            request.audio.sample_rate,
        )
        return session

    def audio(self, sid: str, payload: object) -> None:
        """Accept one ``audio`` payload or raise; accepted audio is always transcribed or reported."""
        session = self._running(sid)
        try:
            self._accept(session, payload)
        except TranscriptionError:
            # A refused payload was dealt with (its error says so): a resuming client counts
            # it among the frames it sent, and must not send the ones after it again.
            if isinstance(payload, (bytes, bytearray, memoryview)):
                session.received += len(payload) // session.audio_format.bytes_per_sample
            raise

    def _accept(self, session: Session, payload: object) -> None:
        size = len(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else 0
        if size > self.config.max_payload_bytes:
            raise InvalidRequest(
                f"audio payload of {size} bytes exceeds the limit of {self.config.max_payload_bytes}; send"
                " smaller chunks (about 100 ms each)",
                code="payload_too_large",
            )
        pcm = decode_pcm(payload, session.audio_format.encoding)
        backlog = (session.accepted - session.processed) / SAMPLE_RATE
        if backlog > self.config.max_backlog:
            raise TranscriptionError(
                f"the server is {backlog:.0f} s behind on this session; this payload was refused",
                code="overloaded",
            )
        # Only audio that is accepted goes through the resampler, which keeps a little of it.
        samples = session.resampler(pcm)
        with session.accepting:
            if session.state != "running":  # a failure ended the session meanwhile
                raise _not_started()
            # Counted even when the resampler keeps it all for now (it comes out with the next
            # chunk): a resuming client sends again only what this does not count.
            session.received += len(pcm)
            if not samples.size:
                return
            session.accepted += len(samples)
            session.last_audio = time.monotonic()
            session.last_chunk = len(samples) / SAMPLE_RATE
            session.queue.put(samples)
        self._notify("audio", session, len(samples))  # metrics: when each sample arrived

    def stop(self, sid: str) -> Session:
        session = self._running(sid)
        self._stop(session)
        return session

    def disconnect(self, sid: str, dropped: bool = False) -> None:
        """The owner left: finish its session anyway so watchers get every final. A connection
        that ``dropped`` (no goodbye: a network failure) leaves it running for
        ``resume_grace`` seconds, for the client to come back with :meth:`resume`."""
        if sid in self._opening:  # its start is still opening a stream: that start gives up
            self._opening[sid] = False
        self.watching = {(s, room) for s, room in self.watching if s != sid}
        session = self._by_owner.pop(sid, None)
        if session is None or session.state == "stopped":
            return
        if dropped and self.config.resume_grace > 0:
            # It goes on transcribing what it was sent (the client's pause finalises its last
            # words); what it emits meanwhile is kept for the resume to replay.
            session.attached = False
            session.detachments += 1
            session.dropped_at = time.monotonic()
            logger.info(
                "session %s: connection lost; kept %.0f s for its client to resume it",
                session.id,
                self.config.resume_grace,
            )
            self._notify("dropped", session, None)
            self.runtime.spawn(self._expire, session, session.detachments)
        elif session.state == "running":
            logger.info("session %s: owner disconnected, finishing", session.id)
            # On a task of its own: sending to a client that missed its ping runs this handler
            # on the sending task, which may be the worker ending the session under its lock.
            self.runtime.spawn(self._stop, session)

    def resume(self, sid: str, data: object) -> Session:
        """Give connection ``sid`` the session named in a ``resume`` request (its own, after a
        dropped connection: the token of its ``ready`` proves it) and replay to it what it
        missed; raises TranscriptionError. Works while the old connection still seems alive (a
        dead network is noticed only after a ping timeout): the new one takes over."""
        request = parse_resume(data)
        current = self._by_owner.get(sid)
        if (current is not None and current.state != "stopped") or sid in self._opening:
            raise InvalidRequest("a session is already running on this connection", code="already_started")
        self._forget_ended()
        session = self._sessions.get(request.session_id) or self._ended.get(request.session_id)
        if session is None or not hmac.compare_digest(session.resume_token.encode(), request.token.encode()):
            raise InvalidRequest(
                f"session {request.session_id} cannot be resumed: it ended more than"
                f" {self.config.resume_grace:.0f} s ago, or never existed, or the token is wrong",
                code="not_resumable",
            )
        with session.emitting:
            previous = session.owner if session.attached else None
            if previous is not None and previous != sid and self._by_owner.get(previous) is session:
                # The old connection is still open (a dead network not yet noticed): it loses
                # the session, and its room unless it joined that room itself.
                self._by_owner.pop(previous)
                if (previous, session.room) not in self.watching and self.leave_room is not None:
                    self._call_quietly(self.leave_room, previous, session.room)
            session.owner, session.attached = sid, True
            session.detachments += 1  # a grace timer running now no longer stops it
            ended = session.state == "stopped"
            if not ended:  # (an ended one stays resumable: this replay may be lost too)
                self._by_owner[sid] = session
                if self.join_room is not None:
                    self.join_room(sid, session.room)
            self.emit(
                "resumed",
                {
                    **self.describe(session),
                    "state": session.state,
                    "next_segment_id": session.next_segment,
                    "received": session.received,
                    "duration": round(session.duration, 3),
                },
                sid,
            )
            for seq, event, payload in list(session.log):
                if seq > request.after:
                    self.emit(event, payload, sid)
            if session.partial is not None and not ended:
                self.emit("partial", session.partial, sid)
            if ended and session.stopped is not None:
                self.emit("stopped", session.stopped, sid)
        logger.info("session %s resumed after event %d (%s)", session.id, request.after, session.state)
        self._notify("resumed", session, None)
        return session

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every session and wait for their last finals (server shutdown)."""
        for session in self.active():
            if session.state == "running":
                self._stop(session)
        deadline = time.monotonic() + timeout
        for session in list(self._sessions.values()):
            while not session.done.is_set() and time.monotonic() < deadline:
                self.runtime.sleep(0.05)

    # --- internals ---------------------------------------------------------------------

    def _backend(self, name: str) -> Backend:
        backend_class(name)  # raises unknown_backend for names the registry does not know
        backend = self.backends.get(name)
        if backend is None:
            raise BackendUnavailable(f"backend '{name}' is not configured on this server")
        return backend

    def _take_slot(self) -> Session | None:
        """Whether a new session may start: None, or the session that must give way to it
        first; raises ``server_busy``. A session waiting for its client to resume gives its
        slot up: a client that is here goes before one that may never come back (after a
        reload, the same user would otherwise be refused for the whole grace)."""
        if len(self.active()) + len(self._opening) < self.config.max_sessions:
            return None
        waiting = [s for s in self.active() if not s.attached and s.state == "running"]
        if not waiting:
            raise TranscriptionError(
                f"the server is running its maximum of {self.config.max_sessions} sessions; try again later",
                code="server_busy",
            )
        return min(waiting, key=lambda s: s.dropped_at)

    def _give_way(self, session: Session, timeout: float = 10.0) -> None:
        """Stop a session waiting for its client, as if its grace had run out (a resume still
        gets its finals and end), and wait for it to finish: it decodes what it holds, and
        ``--max-sessions`` bounds the sessions decoding at once."""
        if session.attached or session.state != "running":  # resumed, or ended, meanwhile
            return
        logger.info("session %s: its slot goes to a new session while it waits for its client", session.id)
        self._stop(session)
        deadline = time.monotonic() + timeout
        while not session.done.is_set() and time.monotonic() < deadline:
            self.runtime.sleep(0.02)

    def _expire(self, session: Session, detachment: int) -> None:
        """Stop a session whose client did not come back within the resume grace."""
        self.runtime.sleep(self.config.resume_grace)
        if session.detachments == detachment and not session.attached and session.state == "running":
            logger.info("session %s: not resumed within %.0f s; finishing", session.id, self.config.resume_grace)
            self._stop(session)

    def _forget_later(self) -> None:
        self.runtime.sleep(self.config.resume_grace + 0.1)
        self._forget_ended()

    def _forget_ended(self) -> None:
        now = time.monotonic()
        for session_id, session in list(self._ended.items()):
            if now - session.ended_at > self.config.resume_grace:
                del self._ended[session_id]

    def _running(self, sid: str) -> Session:
        session = self._by_owner.get(sid)
        if session is None or session.state != "running":
            raise _not_started()
        return session

    def _open_stream(self, backend: Backend, options: StreamOptions) -> Stream:
        if isinstance(backend, DecoderBackend):
            return StreamingPipeline(backend, options, self.config.pipeline)
        if isinstance(backend, StreamingBackend):
            return backend.open_stream(options)
        raise BackendUnavailable(f"backend '{backend.name}' cannot stream")

    def _stop(self, session: Session) -> None:
        with session.accepting:  # no chunk may follow _STOP into the queue (server shutdown)
            if session.state != "running":  # a failure ended it meanwhile
                return
            session.state = "stopping"
            tail = session.resampler.flush()
            if tail.size:
                session.accepted += len(tail)
                session.queue.put(tail)
            session.queue.put(_STOP)

    def _worker(self, session: Session) -> None:
        """Drain the queue in order; batch whatever piled up while the last decode ran."""
        SESSION.set(session.id)  # this worker's log lines (greenlet/thread-local context)
        try:
            while True:
                items = [self._next_item(session)]
                if session.failed:  # while waiting; the error counted the queued audio
                    break
                while True:
                    try:
                        items.append(session.queue.get_nowait())
                    except self.runtime.queue_empty:
                        break
                chunks = [item for item in items if item is not _STOP]
                if chunks:
                    self._feed(session, np.concatenate(chunks))
                if session.failed or any(item is _STOP for item in items):
                    break
            if not session.failed:  # a failed stream has nothing left to flush
                self._flush(session)
        except Exception:
            logger.exception("session %s: worker failed", session.id)
            self._error(
                session,
                TranscriptionError(
                    f"internal error while transcribing; audio after {session.processed / SAMPLE_RATE:.2f} s"
                    " was not transcribed and the session ended (see the server log)",
                    fatal=True,
                ),
            )
        finally:
            self._close(session)

    def _next_item(self, session: Session) -> Any:
        """Wait for the next chunk (or ``_STOP``); meanwhile dispatch what the stream produced
        without audio. Returns ``_STOP`` if a failure ended the session while waiting."""
        while True:
            try:
                return session.queue.get(timeout=POLL_INTERVAL)
            except self.runtime.queue_empty:
                pass
            if session.stream.needs_poll:
                self._poll(session)
            if self._idle(session):
                self._pause(session)
            if session.failed:
                return _STOP

    def _idle(self, session: Session) -> bool:
        """Whether the client paused long enough, with audio the stream has not been told
        about (the queue is empty: everything accepted was processed). A client recording in
        chunks sends the next one a chunk's length after the last: only the time beyond that
        is a pause (1.2 s chunks read as pauses every time, WER 0.04 -> 0.33)."""
        wait = self.config.idle_final
        return (
            wait > 0
            and session.state == "running"
            and session.paused_at != session.processed
            and time.monotonic() - session.last_audio >= wait + session.last_chunk
        )

    def _pause(self, session: Session) -> None:
        # The client sends nothing (muted, a half-duplex app waiting for its turn): its last
        # words would stay a partial until it speaks again; the stream finalises them now.
        session.paused_at = session.processed
        logger.debug("session %s: no audio for %.1f s, finalising what it heard", session.id, self.config.idle_final)
        self._notify("paused", session, None)
        self._without_audio(session, session.stream.pause)

    def _poll(self, session: Session) -> None:
        self._without_audio(session, session.stream.poll)

    def _without_audio(self, session: Session, call: Callable[[], list[Event]]) -> None:
        # No audio comes with a poll or a pause: a failure costs (or a failover re-feeds) only
        # the audio from the stream's last final to what was processed.
        events = self._call_stream(session, call, start=session.processed, end=session.processed)
        self._dispatch(session, events)
        self._release_retained(session)

    def _feed(self, session: Session, audio: np.ndarray) -> None:
        start = session.processed
        if not isinstance(self.backends.get(session.backend), DecoderBackend):
            session.retained.append(audio)
        events = self._call_stream(session, session.stream.feed, audio, start=start, end=start + len(audio))
        session.processed += len(audio)
        self._dispatch(session, events)
        self._release_retained(session)

    def _call_stream(
        self, session: Session, call: Callable[..., list[Event]], *args: Any, start: int, end: int
    ) -> list[Event]:
        """``call(*args)`` on a native thread; a failure fails over or is reported for the
        samples ``start``-``end`` (:meth:`_recover`)."""
        try:
            return self._blocking(session, call, *args)
        except TranscriptionError as exc:
            self._dispatch(session, exc.events)  # finals committed before the failure
            return self._recover(session, exc, start, end)

    def _flush(self, session: Session) -> None:
        stream, end = session.stream, session.processed
        # A flush that fails costs everything its stream had not finalised.
        start = min(end, round((session.offset + stream.committed_until) * SAMPLE_RATE))
        events = self._call_stream(session, stream.flush, start=start, end=end)
        if session.stream is not stream and not session.failed:
            # Failed over: the local stream was fed the audio the cloud had not finalised.
            self._dispatch(session, events)
            events = self._call_stream(session, session.stream.flush, start=start, end=end)
        self._dispatch(session, events)

    def _recover(self, session: Session, exc: TranscriptionError, start: int, end: int) -> list[Event]:
        """Fail over to the local backend, or report the audio span the failure cost."""
        local = self.backends.get("local")
        # The local model continues in the language the session ran in (the cloud's assumed
        # one for "auto"), and only if it can: an English-only model must not take over a
        # French session and turn it into English gibberish.
        local_options = replace(session.options, language=session.options.language or session.language)
        can_fail_over = (
            session.backend != "local"
            and self.config.cloud.failover
            and local is not None
            and local.info().available
            and _supports(local, local_options)
        )
        if not can_fail_over:
            committed = session.offset + session.stream.committed_until
            lost_from = min(committed, start / SAMPLE_RATE) if session.backend != "local" else start / SAMPLE_RATE
            if exc.lost_since is not None:  # the stream says what it lost (an utterance)
                lost_from = min(lost_from, session.offset + exc.lost_since)
            logger.warning("session %s: %s (%s)", session.id, exc.message, exc.code)

            def report(end: int, fatal: bool) -> None:
                message = f"{exc.message}; audio from {lost_from:.2f} s to {max(end, start) / SAMPLE_RATE:.2f} s"
                self._error(session, TranscriptionError(f"{message} was not transcribed", code=exc.code, fatal=fatal))

            if session.backend == "local":
                report(end, exc.fatal)
                return []
            # A cloud stream stays failed: end the session with one fatal error naming all the
            # audio it cost, instead of failing (and reporting) again on every chunk. Under the
            # lock, audio() can neither add to the span nor refuse a chunk before the client
            # has this error: the state changes only after it was sent.
            with session.accepting:
                session.failed = True
                report(max(end, session.accepted), fatal=True)
                session.state = "stopping"
            return []
        resume_at = session.offset + session.stream.committed_until
        logger.warning(
            "session %s: %s failed (%s); failing over to local from %.2f s",
            session.id,
            session.backend,
            exc.code,
            resume_at,
        )
        try:
            session.stream.close()
        except Exception:
            logger.debug("closing the failed stream raised", exc_info=True)
        previous = session.backend
        # Building a pipeline loads its VAD: not on the event loop.
        session.stream = self._call_blocking(in_session(session.id, self._open_stream), local, local_options)
        session.backend = "local"
        # The local stream's time 0 is the first re-fed sample: committed_until, unless the
        # retained audio was cut at MAX_RETAINED_SECONDS after it (that audio is lost).
        first = max(round(resume_at * SAMPLE_RATE), session.retained_from)
        session.offset = first / SAMPLE_RATE
        # A client paused when the cloud failed must have the local stream's words final too.
        session.paused_at = -1
        at = round(session.offset, 3)
        self._to_room(
            session,
            "backend_changed",
            {
                "session_id": session.id,
                "from": previous,
                "to": "local",
                "reason": exc.message,
                "code": exc.code,
                "at": at,
            },
        )
        # The cloud's last partial covered audio the local model is about to redo: clear it.
        self._to_room(session, "partial", {"session_id": session.id, "text": "", "start": at, "end": at})
        self._notify("failover", session, exc)
        if first > round(resume_at * SAMPLE_RATE):
            lost = f"audio from {resume_at:.2f} s to {first / SAMPLE_RATE:.2f} s"
            logger.warning("session %s: %s was no longer retained", session.id, lost)
            self._error(
                session,
                TranscriptionError(
                    f"{exc.message}; {lost} was older than the {MAX_RETAINED_SECONDS:.0f} s kept for a failover"
                    " and was not transcribed",
                    code=exc.code,
                    fatal=False,
                ),
            )
        audio = self._retained_since(session, first)
        session.retained, session.retained_from = [], 0
        if not audio.size:
            return []
        # A local failure on this audio is reported like any other (the span it cost).
        return self._call_stream(session, session.stream.feed, audio, start=first, end=max(end, session.processed))

    def _blocking(self, session: Session, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a stream call on a native thread, logging under the session's id."""
        return self._call_blocking(in_session(session.id, fn), *args)

    def _call_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``runtime.run_blocking`` that re-raises ``fn``'s exception here: returned rather than
        raised across the thread boundary, where gevent's threadpool would print every expected
        failure (a cloud drop, a refused key) as a crash."""
        value, error = self.runtime.run_blocking(_capture, fn, *args)
        if error is not None:
            raise error
        return value

    def _retained_since(self, session: Session, sample: int) -> np.ndarray:
        if not session.retained:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(session.retained)
        skip = max(0, sample - session.retained_from)
        return audio[skip:]

    def _release_retained(self, session: Session) -> None:
        """Drop retained audio the cloud has finalised; bound the rest."""
        if not session.retained:
            return
        keep_from = int((session.offset + session.stream.committed_until) * SAMPLE_RATE)
        oldest = session.processed - int(MAX_RETAINED_SECONDS * SAMPLE_RATE)
        keep_from = max(keep_from, oldest)
        if keep_from <= session.retained_from:
            return
        audio = np.concatenate(session.retained)[keep_from - session.retained_from :]
        session.retained = [audio] if audio.size else []
        session.retained_from = keep_from

    def _dispatch(self, session: Session, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Final):
                if not event.text:
                    continue
                # Finals are append-only with non-decreasing times, whatever a backend does.
                payload = final_payload(session.id, session.next_segment, event, session.offset)
                payload["start"] = max(payload["start"], session.last_final_start)
                payload["end"] = max(payload["end"], payload["start"])
                session.last_final_start = payload["start"]
                session.finals.append((event.text, event.joins_previous))
                self._to_room(session, "final", payload)
                session.next_segment += 1
            elif isinstance(event, Partial):
                self._to_room(session, "partial", partial_payload(session.id, event, session.offset))
            elif isinstance(event, LanguageDetected):
                session.language = event.language
                self._to_room(session, "language", language_payload(session.id, event))
            elif isinstance(event, SpeechActivity):
                session.speech.append((event.start + session.offset, event.end + session.offset))
            self._notify("event", session, event)

    def _to_room(self, session: Session, event: str, payload: dict) -> None:
        """Send a session's event to its room, and keep it for a client that resumes."""
        with session.emitting:
            if event == "partial":
                session.partial = payload
            elif event != "stopped":
                self._log(session, event, payload)
            self.emit(event, payload, session.room)

    def _error(self, session: Session, error: TranscriptionError) -> None:
        self._notify("error", session, error)
        payload = {**error.to_payload(), "session_id": session.id}
        with session.emitting:
            # Kept even when sent: a connection not yet noticed dead loses it silently.
            self._log(session, "error", payload)
            if session.attached:
                self.emit("error", payload, session.owner)

    @staticmethod
    def _log(session: Session, event: str, payload: dict) -> None:
        session.seq += 1
        payload["seq"] = session.seq
        session.log.append((session.seq, event, payload))

    def _close(self, session: Session) -> None:
        try:
            session.stream.close()
        except Exception:
            logger.debug("session %s: closing the stream raised", session.id, exc_info=True)
        session.state = "stopped"
        payload = {
            "session_id": session.id,
            "duration": round(session.duration, 3),
            "transcript": session.transcript,
        }
        session.stopped = payload
        self._notify("stopped", session, payload)
        self._to_room(session, "stopped", payload)
        stays = (session.owner, session.room) in self.watching or any(
            s is not session and s.owner == session.owner and s.room == session.room for s in self.active()
        )
        if self.leave_room is not None and session.attached and not stays:
            # The owner joined the room with its start: it leaves with its session, or it
            # would hear the next session someone starts there as if it were its own.
            self._call_quietly(self.leave_room, session.owner, session.room)
        if self.config.resume_grace > 0:
            # Its client may be away without the server knowing yet (a dead network is noticed
            # a ping timeout late): its end stays resumable, without its audio.
            session.ended_at = time.monotonic()
            session.retained = []
            self._forget_ended()
            self._ended[session.id] = session
            self.runtime.spawn(self._forget_later)
        self._sessions.pop(session.id, None)
        if self._by_owner.get(session.owner) is session:
            self._by_owner.pop(session.owner, None)
        session.done.set()
        logger.info("session %s stopped: %.1f s of audio, %d finals", session.id, session.duration, len(session.finals))

    @staticmethod
    def _call_quietly(call: RoomCall, sid: str, room: str) -> None:
        try:
            call(sid, room)
        except Exception:  # the connection may be gone already
            logger.debug("a room change for %s failed", sid, exc_info=True)

    def report_error(self, sid: str, error: TranscriptionError) -> None:
        """An error answered to a client outside a session worker (metrics count it)."""
        self._notify("error", self._by_owner.get(sid), error)

    def _notify(self, kind: str, session: Session | None, detail: Any) -> None:
        for listener in self.listeners:
            try:
                listener(kind, session, detail)
            except Exception:
                logger.exception("session listener failed on %s", kind)


def _capture(fn: Callable[..., Any], *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller, on its own thread
        return None, exc


def _supports(backend: Backend, options: StreamOptions) -> bool:
    try:
        backend.validate(options)
    except TranscriptionError:
        return False
    return True


def _not_started() -> InvalidRequest:
    return InvalidRequest("no session is running on this connection; send start first", code="not_started")
