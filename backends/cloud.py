"""Cloud backend: a proxy to the Speechmatics real-time API through the ``speechmatics-rt`` SDK.

The browser never sees the API key: the server holds it and forwards each session's audio.

Threads. :class:`CloudStream` methods are synchronous and called from the session's worker
thread. Each stream owns a dedicated asyncio event loop, running the SDK's ``AsyncClient`` on a
native OS thread of its own; ``feed`` hands it PCM and collects the events received so far.
Under gevent monkey patching ``threading`` would give greenlets and gevent locks, which cannot
block one native thread until another wakes it, so the stream starts its thread and builds its
locks from the *original* ``_thread`` functions (:func:`backends.native.native_thread_api`).

Flow control. Audio counts as outstanding from ``feed`` until the service acknowledges it with
``AudioAdded``. When ``max_unacked_seconds`` are outstanding, ``feed`` waits; when no
acknowledgement arrives for ``ack_timeout`` seconds it raises :class:`CloudError`. Memory per
stream is therefore bounded whatever the network does.

Failover. ``committed_until`` is the end of the last final *returned to the caller* (by
``feed``/``flush``): finals received but not yet returned when a failure is raised are dropped,
and the session re-transcribes that audio locally from ``committed_until``, so no speech is lost.

Languages. Speechmatics real-time needs a language (its automatic language identification is
batch-only), so a session without one (``auto``) runs in ``default_language`` (English unless
configured) and reports it once with a :class:`LanguageDetected` of probability 0.0, as the
local pipeline does for a language it assumed rather than detected.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from backends.base import (
    SAMPLE_RATE,
    BackendInfo,
    Event,
    Final,
    LanguageDetected,
    Partial,
    SpeechActivity,
    Stream,
    StreamingBackend,
    StreamOptions,
    Word,
)
from backends.errors import CloudError, ConfigurationError
from backends.native import Notifier, native_thread_api

logger = logging.getLogger(__name__)

DEFAULT_URL = "wss://eu2.rt.speechmatics.com/v2"  # the SDK's own default, for display only
OPERATING_POINTS = ("standard", "enhanced")
MAX_DELAY_RANGE = (0.7, 4.0)  # seconds, the API's accepted range for ``max_delay``

# Our language codes (Whisper's, ISO 639-1 where one exists) -> Speechmatics real-time codes
# (docs.speechmatics.com/speech-to-text/languages). Whisper has no code for Mandarin alone:
# "zh" maps to Speechmatics' Mandarin "cmn", which is also accepted as is.
LANGUAGES: dict[str, str] = {
    "ar": "ar", "ba": "ba", "be": "be", "bg": "bg", "bn": "bn", "ca": "ca", "cmn": "cmn", "cs": "cs",
    "cy": "cy", "da": "da", "de": "de", "el": "el", "en": "en", "eo": "eo", "es": "es", "et": "et",
    "eu": "eu", "fa": "fa", "fi": "fi", "fr": "fr", "ga": "ga", "gl": "gl", "he": "he", "hi": "hi",
    "hr": "hr", "hu": "hu", "ia": "ia", "id": "id", "it": "it", "ja": "ja", "ko": "ko", "lt": "lt",
    "lv": "lv", "mn": "mn", "mr": "mr", "ms": "ms", "mt": "mt", "nl": "nl", "no": "no", "pl": "pl",
    "pt": "pt", "ro": "ro", "ru": "ru", "sk": "sk", "sl": "sl", "sv": "sv", "sw": "sw", "ta": "ta",
    "th": "th", "tl": "tl", "tr": "tr", "ug": "ug", "uk": "uk", "ur": "ur", "vi": "vi", "yue": "yue",
    "zh": "cmn",
}  # fmt: skip

# Speechmatics ``Error.type`` -> (our error code, what it means for the user).
ERROR_TYPES: dict[str, tuple[str, str]] = {
    "not_authorised": (
        "cloud_not_authorised",
        "Speechmatics rejected the API key; check SPEECHMATICS_API_KEY (and that the key is valid"
        " for the real-time endpoint in use)",
    ),
    "insufficient_funds": ("cloud_insufficient_funds", "Speechmatics could not charge the account"),
    "quota_exceeded": (
        "cloud_quota_exceeded",
        "Speechmatics refused the session: the account's limit of concurrent sessions is reached;"
        " retry in a few seconds",
    ),
    "timelimit_exceeded": (
        "cloud_timelimit_exceeded",
        "the Speechmatics account has used up its transcription hours",
    ),
    "invalid_audio_type": (
        "cloud_invalid_audio_type",
        "Speechmatics did not accept the audio format (raw pcm_s16le, 16 kHz)",
    ),
    "invalid_model": (
        "cloud_invalid_model",
        "Speechmatics cannot transcribe the requested language or model on this account",
    ),
    "invalid_config": ("cloud_invalid_config", "Speechmatics rejected the transcription settings"),
    "not_allowed": ("cloud_not_allowed", "this Speechmatics account may not use the requested feature"),
    "idle_timeout": ("cloud_idle_timeout", "Speechmatics ended the session: no audio for too long"),
    "session_timeout": (
        "cloud_session_timeout",
        "Speechmatics ended the session: the maximum session duration was reached",
    ),
    "job_error": (
        "cloud_job_error",
        "Speechmatics could not process the session; retry in a few seconds",
    ),
    "buffer_error": ("cloud_buffer_error", "audio reached Speechmatics faster than it could take it"),
    "data_error": ("cloud_buffer_error", "audio reached Speechmatics faster than it could take it"),
    "invalid_message": ("cloud_protocol_error", "Speechmatics rejected a message from this server"),
    "protocol_error": ("cloud_protocol_error", "Speechmatics rejected a message from this server"),
    "invalid_output_format": ("cloud_protocol_error", "Speechmatics rejected a message from this server"),
    "session_transfer": ("cloud_session_transfer", "Speechmatics failed to move the session between servers"),
    "internal_error": ("cloud_service_error", "Speechmatics reported an internal error; retry shortly"),
}

# WebSocket close codes the service documents, as the ``Error.type`` they stand for. Only
# consulted when the in-band ``Error`` message did not arrive first.
CLOSE_CODES: dict[int, str] = {
    1003: "protocol_error",
    1008: "idle_timeout",  # policy: idle or maximum session duration
    1011: "internal_error",
    4001: "not_authorised",
    4004: "invalid_model",
    4005: "quota_exceeded",
    4006: "timelimit_exceeded",
    4013: "job_error",
}

_MAX_FRAME_BYTES = 16000  # 0.5 s of pcm_s16le per AddAudio frame
_LIVENESS_INTERVAL = 0.25  # seconds between checks that the connection is still up
_THREAD_JOIN_TIMEOUT = 5.0
_END = object()  # inbox marker: send EndOfStream
_FORCE_END = object()  # inbox marker: send ForceEndOfUtterance (the client paused)
_CLOSE = object()  # inbox marker: stop and close the connection


@dataclass(frozen=True)
class CloudBackendOptions:
    api_key: str | None = None
    url: str | None = None  # None: the SDK's default endpoint (or $SPEECHMATICS_RT_URL)
    max_delay: float = 1.0  # seconds between the end of a word and its final
    operating_point: str = "enhanced"  # standard | enhanced
    enable_partials: bool = True
    connect_timeout: float = 10.0  # seconds to connect and get RecognitionStarted
    max_unacked_seconds: float = 10.0  # audio fed but not yet acknowledged before feed() waits
    ack_timeout: float = 10.0  # seconds without any acknowledgement before feed() gives up
    flush_timeout: float = 30.0  # seconds flush() waits for EndOfTranscript
    default_language: str = "en"  # used for sessions without a language (RT has no detection)


def speechmatics_language(language: str | None, default: str = "en") -> str:
    """The Speechmatics code for one of our language codes (None or "auto": ``default``)."""
    if language is None or language == "auto":
        language = default
    try:
        return LANGUAGES[language]
    except KeyError:
        raise ValueError(f"no Speechmatics real-time language for '{language}'") from None


def cloud_error(error_type: str | None, reason: str | None = None) -> CloudError:
    """The :class:`CloudError` for a Speechmatics ``Error`` message (``type``, ``reason``)."""
    code, human = ERROR_TYPES.get(error_type or "", ("cloud_error", "Speechmatics reported an error"))
    message = f"{human} (Speechmatics: {reason})" if reason else human
    return CloudError(message, code=code)


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The stream loop's default executor: runs its blocking helpers (``getaddrinfo`` when
    connecting) in the loop thread itself, which only ever serves this one connection.

    asyncio's own default starts ``threading`` threads: under gevent monkey patching those are
    greenlets of the loop thread's hub, and ``concurrent.futures`` joins them at interpreter
    exit, which hangs once the loop thread is gone."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a refused WebSocket handshake anywhere in the exception chain."""
    for item in _exception_chain(exc):
        response = getattr(item, "response", None)
        status = getattr(response, "status_code", None) or getattr(item, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _close_code(exc: BaseException) -> tuple[int | None, str]:
    """The close code and reason the server sent, when the chain holds a websockets close."""
    for item in _exception_chain(exc):
        frame = getattr(item, "rcvd", None)
        if frame is not None and isinstance(getattr(frame, "code", None), int):
            return frame.code, getattr(frame, "reason", "") or ""
    return None, ""


class CloudStream(Stream):
    """One session's Speechmatics real-time connection (times: seconds since the first sample).

    Create it through :meth:`CloudBackend.open_stream`, which returns once the service has
    answered ``RecognitionStarted``.
    """

    def __init__(self, options: CloudBackendOptions, language: str, announce_language: str | None = None) -> None:
        self._options = options
        self._language = language
        self._assumed_language = announce_language
        start_new_thread, allocate_lock = native_thread_api()
        self._state = Notifier(allocate_lock)
        # --- shared with the loop thread, guarded by self._state.lock ---
        # Events not yet returned; an entry with event None only moves committed_until
        # (an empty final: the service finalised silence).
        self._pending: list[tuple[Event | None, float | None]] = []
        if announce_language is not None:
            self._pending.append((LanguageDetected(language=announce_language, probability=0.0), None))
        self._started = False
        self._failure: CloudError | None = None
        self._eot = False
        self._fed_samples = 0
        self._acked_samples = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished = False
        self._closing = False
        # --- caller thread only ---
        self._committed_until = 0.0
        self._flushed = False
        self._closed = False
        self.max_outstanding_samples = 0  # the largest backlog seen by feed(), for diagnostics
        # --- loop thread only ---
        self._seq = 0
        self._sent_samples = 0
        # (seq_no, samples up to it, loop time it was sent)
        self._unacked: collections.deque[tuple[int, int, float]] = collections.deque()
        self._partial = ""
        self._word_delimiter = " "
        self._eot_event: asyncio.Event | None = None
        self._thread_done = allocate_lock()
        self._thread_done.acquire()
        # The loop thread runs in the caller's context: its log lines carry the session id
        # (server/logs.py), which a new thread would otherwise not inherit.
        start_new_thread(contextvars.copy_context().run, (self._thread_main,))

    # --- the caller's side (session worker thread) -------------------------------------

    @property
    def language(self) -> str:
        """The Speechmatics language code the session runs in."""
        return self._language

    @property
    def assumed_language(self) -> str | None:
        """Our code of the language a session without one runs in (None: it named one)."""
        return self._assumed_language

    @property
    def committed_until(self) -> float:
        return self._committed_until

    @property
    def outstanding_seconds(self) -> float:
        """Audio fed but not yet acknowledged by the service."""
        with self._state.lock:
            return (self._fed_samples - self._acked_samples) / SAMPLE_RATE

    def wait_started(self) -> None:
        """Block until ``RecognitionStarted``; raise :class:`CloudError` if the start failed."""
        # The loop thread enforces connect_timeout itself; the margin covers its own start.
        started = self._state.wait_for(
            lambda: self._started or self._failure is not None, self._options.connect_timeout + 5.0
        )
        if not started:
            self._fail(
                CloudError(
                    f"no answer from Speechmatics within {self._options.connect_timeout:.0f} s",
                    code="cloud_timeout",
                )
            )
        self._raise_if_failed()

    def feed(self, audio: np.ndarray) -> list[Event]:
        self._raise_if_failed()
        if self._flushed or self._closed:
            raise RuntimeError("feed() after flush() or close()")
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        if samples.size:
            self._wait_for_room()
            pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            with self._state.lock:
                self._fed_samples += samples.size
                self.max_outstanding_samples = max(
                    self.max_outstanding_samples, self._fed_samples - self._acked_samples
                )
            self._post(pcm)
        return self._take_events()

    @property
    def needs_poll(self) -> bool:
        # Without the lock (the event loop asks): reading a list's length or an attribute is
        # atomic, and a stale answer only delays the poll by one interval.
        if self._flushed or self._closed:
            return False  # flush() waits for the rest itself
        return bool(self._pending) or self._failure is not None

    def poll(self) -> list[Event]:
        if self._flushed or self._closed:
            return []
        self._raise_if_failed()
        return self._take_events()

    def pause(self) -> list[Event]:
        # The service finalises words once later audio shows they are over (``max_delay``);
        # with no audio coming, ForceEndOfUtterance asks for the final now. It comes back on
        # its own time: the session worker polls for it.
        if self._flushed or self._closed:
            return []
        self._raise_if_failed()
        self._post(_FORCE_END)
        return self._take_events()

    def flush(self) -> list[Event]:
        if self._flushed:
            return []
        self._raise_if_failed()
        self._flushed = True
        self._post(_END)
        done = self._state.wait_for(lambda: self._eot or self._failure is not None, self._options.flush_timeout)
        if not done:
            self._fail(
                CloudError(
                    f"Speechmatics did not finish the transcript within {self._options.flush_timeout:.0f} s",
                    code="cloud_timeout",
                )
            )
        self._raise_if_failed()
        return self._take_events()

    def close(self) -> None:
        """Ask the loop thread to close the connection and end; returns at once (it may be
        called on an event loop), :meth:`wait_closed` waits for the thread."""
        if self._closed:
            return
        self._closed = True
        with self._state.lock:
            self._closing = True
            self._state.notify_all()
        # Asked, not cancelled: the loop thread closes the connection properly (a close
        # interrupted by a cancellation can leave the socket open). Its every wait is bounded.
        self._post(_CLOSE)

    def wait_closed(self, timeout: float = _THREAD_JOIN_TIMEOUT) -> bool:
        """Wait until the loop thread has ended (after :meth:`close`); False on timeout."""
        if self._thread_done.acquire(True, timeout):
            self._thread_done.release()
            return True
        return False

    def _wait_for_room(self) -> None:
        """Flow control: wait while ``max_unacked_seconds`` are outstanding; fail when no
        acknowledgement arrives for ``ack_timeout`` seconds."""
        bound = max(1, int(self._options.max_unacked_seconds * SAMPLE_RATE))
        while True:
            with self._state.lock:
                acked = self._acked_samples
            room = self._state.wait_for(
                lambda: (
                    self._failure is not None
                    or self._fed_samples - self._acked_samples < bound
                    or self._acked_samples != acked  # noqa: B023 - evaluated before acked changes
                ),
                self._options.ack_timeout,
            )
            with self._state.lock:
                if self._failure is not None or self._fed_samples - self._acked_samples < bound:
                    break
                progressed = self._acked_samples != acked
            if not room or not progressed:
                self._fail(
                    CloudError(
                        f"Speechmatics acknowledged no audio for {self._options.ack_timeout:g} s"
                        f" ({(self._fed_samples - acked) / SAMPLE_RATE:.1f} s outstanding)",
                        code="cloud_timeout",
                    )
                )
                break
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        with self._state.lock:
            failure = self._failure
        if failure is not None:
            raise failure

    def _take_events(self) -> list[Event]:
        with self._state.lock:
            pending, self._pending = self._pending, []
        events: list[Event] = []
        for event, committed in pending:
            if committed is not None:
                self._committed_until = max(self._committed_until, committed)
            if event is not None:
                events.append(event)
        return events

    def _post(self, item: object) -> None:
        """Hand audio bytes or a marker to the loop thread."""
        with self._state.lock:
            loop, finished = self._loop, self._finished
        if loop is None or finished:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: a failure is set
            loop.call_soon_threadsafe(self._inbox.put_nowait, item)

    # --- shared -------------------------------------------------------------------------

    def _fail(self, error: CloudError, *, quiet: bool = False) -> None:
        """Record the stream's first failure (later ones, or any after EndOfTranscript, are moot)."""
        with self._state.lock:
            if self._failure is None and not self._eot:
                self._failure = error
                if not quiet:
                    logger.warning("Speechmatics session failed: %s: %s", error.code, error.message)
            self._state.notify_all()

    def _push(self, event: Event | None, committed: float | None = None) -> None:
        with self._state.lock:
            self._pending.append((event, committed))

    # --- the loop thread --------------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.set_default_executor(_InlineExecutor(max_workers=1))
            self._inbox: asyncio.Queue[object] = asyncio.Queue()
            self._eot_event = asyncio.Event()
            task = loop.create_task(self._session())
            with self._state.lock:
                self._loop = loop
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
            # As asyncio.run() does: let what the connection left behind finish.
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for leftover in leftovers:
                leftover.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        except Exception as exc:  # a bug: never let the thread die silently
            logger.exception("Speechmatics client thread failed")
            self._fail(CloudError(f"the Speechmatics client failed: {exc}", code="cloud_error"))
        finally:
            with self._state.lock:
                self._finished = True
            # Whatever ended the session, nothing may wait for it any longer.
            self._fail(CloudError("the Speechmatics session ended", code="cloud_connection_lost"), quiet=True)
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._thread_done.release()

    async def _session(self) -> None:
        from speechmatics.rt import (
            AsyncClient,
            AudioEncoding,
            AudioFormat,
            ConnectionConfig,
            Model,
            ServerMessageType,
            TranscriptionConfig,
        )

        options = self._options
        client = AsyncClient(
            api_key=options.api_key,
            url=options.url,
            conn_config=ConnectionConfig(
                open_timeout=options.connect_timeout, ping_interval=20.0, ping_timeout=60.0, close_timeout=2.0
            ),
        )
        client.on(ServerMessageType.RECOGNITION_STARTED, self._on_recognition_started)
        client.on(ServerMessageType.AUDIO_ADDED, self._on_audio_added)
        client.on(ServerMessageType.ADD_PARTIAL_TRANSCRIPT, self._on_partial)
        client.on(ServerMessageType.ADD_TRANSCRIPT, self._on_final)
        client.on(ServerMessageType.END_OF_TRANSCRIPT, self._on_end_of_transcript)
        client.on(ServerMessageType.ERROR, self._on_error)
        client.on(ServerMessageType.WARNING, self._on_warning)
        client.on(ServerMessageType.INFO, self._on_info)
        try:
            try:
                await asyncio.wait_for(
                    client.start_session(
                        transcription_config=TranscriptionConfig(
                            language=self._language,
                            model=Model(options.operating_point),
                            max_delay=options.max_delay,
                            enable_partials=options.enable_partials,
                        ),
                        # Stated explicitly: without an encoding the SDK announces "file" audio.
                        audio_format=AudioFormat(encoding=AudioEncoding.PCM_S16LE, sample_rate=SAMPLE_RATE),
                    ),
                    options.connect_timeout,
                )
            except Exception as exc:  # noqa: BLE001 - the vendor boundary: mapped to a CloudError
                self._fail(self._start_error(exc))
                return
            with self._state.lock:
                self._started = True
                self._state.notify_all()
            await self._pump(client)
        finally:
            try:
                await client.close()
            except Exception:
                logger.debug("closing the Speechmatics client failed", exc_info=True)

    async def _pump(self, client: Any) -> None:
        """Forward the caller's audio until EndOfStream was answered, or a failure."""
        get: asyncio.Future[object] | None = None
        try:
            while True:
                if get is None:
                    get = asyncio.ensure_future(self._inbox.get())
                done, _ = await asyncio.wait({get}, timeout=_LIVENESS_INTERVAL)
                if self._failure is not None or self._closing:
                    return
                if not done:
                    if _connection_closed(client):
                        self._fail(self._lost_error())
                        return
                    # A service that stops answering but keeps the socket open: feed() notices
                    # only when it waits for room, and a paused client feeds nothing.
                    oldest = self._unacked[0][2] if self._unacked else None
                    if oldest is not None and asyncio.get_running_loop().time() - oldest > self._options.ack_timeout:
                        self._fail(
                            CloudError(
                                f"Speechmatics acknowledged no audio for {self._options.ack_timeout:g} s"
                                f" ({(self._sent_samples - self._acked_samples) / SAMPLE_RATE:.1f} s outstanding)",
                                code="cloud_timeout",
                            )
                        )
                        return
                    continue
                items = [get.result()]
                get = None
                while not self._inbox.empty():
                    items.append(self._inbox.get_nowait())
                if _CLOSE in items:
                    return
                buffer = bytearray()
                for item in items:
                    if isinstance(item, bytes):
                        buffer += item
                        continue
                    if not await self._send(client, buffer):
                        return
                    buffer.clear()
                    if item is _END:
                        await self._end_stream(client)
                        return
                    if item is _FORCE_END and not await self._force_end_of_utterance(client):
                        return
                if not await self._send(client, buffer):
                    return
        finally:
            if get is not None:
                get.cancel()

    async def _send(self, client: Any, data: bytearray) -> bool:
        for offset in range(0, len(data), _MAX_FRAME_BYTES):
            frame = bytes(data[offset : offset + _MAX_FRAME_BYTES])
            if self._failure is not None:
                return False
            # Recorded before sending: the acknowledgement may be handled while send awaits.
            self._seq += 1
            self._sent_samples += len(frame) // 2
            self._unacked.append((self._seq, self._sent_samples, asyncio.get_running_loop().time()))
            try:
                await client.send_audio(frame)
            except Exception as exc:  # noqa: BLE001 - mapped to a CloudError
                await self._fail_after_send_error(client, exc)
                return False
        return True

    async def _send_message(self, client: Any, message: dict[str, Any]) -> bool:
        """Send a control message; False if that failed the stream."""
        try:
            await client.send_message(message)
        except Exception as exc:  # noqa: BLE001 - mapped to a CloudError
            await self._fail_after_send_error(client, exc)
            return False
        return True

    async def _force_end_of_utterance(self, client: Any) -> bool:
        # The timestamp (audio seconds sent) marks where the utterance ends, as the SDK's
        # force_end_of_utterance() sets it.
        message = {"message": "ForceEndOfUtterance", "timestamp": self._sent_samples / SAMPLE_RATE}
        return await self._send_message(client, message)

    async def _end_stream(self, client: Any) -> None:
        # Our own EndOfStream: last_seq_no must count every frame sent, whereas the SDK's
        # counter follows the last AudioAdded received.
        if not await self._send_message(client, {"message": "EndOfStream", "last_seq_no": self._seq}):
            return
        assert self._eot_event is not None
        while not self._eot_event.is_set() and self._failure is None and not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._eot_event.wait(), _LIVENESS_INTERVAL)
            if not self._eot_event.is_set() and _connection_closed(client):
                self._fail(self._lost_error())

    async def _fail_after_send_error(self, client: Any, exc: Exception) -> None:
        # The service sends an Error message before it closes; give the receiving side a moment
        # to handle it, so the failure names the cause rather than a bare lost connection.
        for _ in range(20):
            if self._failure is not None or _connection_closed(client):
                break
            await asyncio.sleep(0.025)
        code, reason = _close_code(exc)
        if code in CLOSE_CODES:
            self._fail(cloud_error(CLOSE_CODES[code], reason or None))
        else:
            self._fail(self._lost_error(exc))

    def _lost_error(self, exc: BaseException | None = None) -> CloudError:
        detail = f": {exc}" if exc is not None else ""
        return CloudError(
            f"the connection to Speechmatics was lost after {self._sent_samples / SAMPLE_RATE:.1f} s of audio{detail}",
            code="cloud_connection_lost",
        )

    def _start_error(self, exc: BaseException) -> CloudError:
        with self._state.lock:
            if self._failure is not None:  # an Error message said why
                return self._failure
        from speechmatics.rt import TimeoutError as SdkTimeoutError

        host = urlsplit(self._options.url or DEFAULT_URL).netloc or "?"
        if isinstance(exc, (asyncio.TimeoutError, SdkTimeoutError)):
            return CloudError(
                f"no answer from Speechmatics ({host}) within {self._options.connect_timeout:.0f} s",
                code="cloud_timeout",
            )
        status = _http_status(exc)
        if status in (401, 403):
            return cloud_error("not_authorised", f"HTTP {status}")
        if status == 429:
            return cloud_error("quota_exceeded", "HTTP 429")
        if status is not None:
            return CloudError(f"Speechmatics ({host}) refused the connection: HTTP {status}", code="cloud_unreachable")
        code, reason = _close_code(exc)
        if code in CLOSE_CODES:
            return cloud_error(CLOSE_CODES[code], reason or None)
        if any(isinstance(item, OSError) for item in _exception_chain(exc)):
            return CloudError(f"cannot reach Speechmatics at {host}: {exc}", code="cloud_unreachable")
        return CloudError(f"the Speechmatics session did not start: {exc}", code="cloud_error")

    # Handlers, called by the SDK's receive loop on the loop thread.

    def _on_recognition_started(self, message: dict[str, Any]) -> None:
        info = message.get("language_pack_info") or {}
        delimiter = info.get("word_delimiter")
        if isinstance(delimiter, str):
            self._word_delimiter = delimiter
        logger.debug("Speechmatics session %s started (%s)", message.get("id"), self._language)

    def _on_audio_added(self, message: dict[str, Any]) -> None:
        seq_no = int(message.get("seq_no", 0))
        acked: int | None = None
        while self._unacked and self._unacked[0][0] <= seq_no:
            acked = self._unacked.popleft()[1]
        if acked is not None:
            with self._state.lock:
                self._acked_samples = acked
                self._state.notify_all()

    def _on_partial(self, message: dict[str, Any]) -> None:
        metadata = message.get("metadata") or {}
        text = str(metadata.get("transcript") or "").strip()
        if text == self._partial:
            return
        self._partial = text
        self._push(
            Partial(text=text, start=float(metadata.get("start_time", 0.0)), end=float(metadata.get("end_time", 0.0)))
        )

    def _on_final(self, message: dict[str, Any]) -> None:
        metadata = message.get("metadata") or {}
        words, joins = transcript_words(message.get("results") or [], self._word_delimiter)
        if joins:
            # The service finalised a word and its punctuation apart (a forced end of
            # utterance fell between them): metadata.transcript would read ". Hello", so the
            # text is built from the words and marked to join the previous final.
            text = "".join(w.text for w in words).strip()
        else:
            text = str(metadata.get("transcript") or "").strip() or "".join(w.text for w in words).strip()
        start = float(metadata.get("start_time", words[0].start if words else 0.0))
        end = max([float(metadata.get("end_time", 0.0))] + [w.end for w in words])
        if not text:
            self._push(None, end)
            return
        if words:
            start = min(start, words[0].start)
        self._push(Final(text=text, start=start, end=end, words=tuple(words), joins_previous=joins), end)
        self._push(SpeechActivity(start=start, end=end))
        if self._partial:
            self._partial = ""
            self._push(Partial(text="", start=end, end=end))

    def _on_end_of_transcript(self, message: dict[str, Any]) -> None:
        with self._state.lock:
            self._eot = True
            self._state.notify_all()
        if self._eot_event is not None:
            self._eot_event.set()

    def _on_error(self, message: dict[str, Any]) -> None:
        self._fail(cloud_error(message.get("type"), message.get("reason")))

    def _on_warning(self, message: dict[str, Any]) -> None:
        logger.warning("Speechmatics warning %s: %s", message.get("type"), message.get("reason"))

    def _on_info(self, message: dict[str, Any]) -> None:
        logger.debug("Speechmatics info %s: %s", message.get("type"), message.get("reason"))


def transcript_words(results: list[dict[str, Any]], delimiter: str = " ") -> tuple[list[Word], bool]:
    """The words of an ``AddTranscript``'s results as Whisper shapes them (the delimiter in
    front, punctuation attached to its word), and whether the first word attaches to the
    previous transcript's last word.

    ``attaches_to`` says on which side of a punctuation mark no delimiter goes: ``previous``
    ("word,"), ``next`` ("(word"), ``both`` ("well-known": one word, as Whisper writes it) or
    ``none`` (a mark standing alone between delimiters).
    """
    words: list[Word] = []
    prefix = ""  # punctuation attached to the next word
    glue = False  # the next word goes on the last one (punctuation attached to both sides)
    joins = False
    for result in results:
        alternatives = result.get("alternatives") or []
        if not alternatives:
            continue
        best = alternatives[0]
        content = str(best.get("content", ""))
        start = float(result.get("start_time", 0.0))
        end = float(result.get("end_time", start))
        if result.get("type") == "punctuation":
            attaches = result.get("attaches_to", "previous")
            if attaches in ("previous", "both") and not prefix:
                glue = attaches == "both"
                if words:
                    words[-1] = replace(words[-1], text=words[-1].text + content)
                else:
                    # Punctuation that goes on a word finalised in an earlier transcript:
                    # its own word, with no delimiter, joined to that one.
                    words.append(Word(text=content, start=start, end=end, probability=1.0))
                    joins = True
                continue
            if attaches == "none":
                words.append(Word(text=delimiter + prefix + content, start=start, end=end, probability=1.0))
                prefix, glue = "", False
                continue
            prefix += content
            continue
        confidence = float(best.get("confidence", 1.0))
        if glue and words:
            last = words[-1]
            words[-1] = Word(
                text=last.text + prefix + content,
                start=last.start,
                end=max(last.end, end),
                probability=min(last.probability, confidence),
            )
        else:
            words.append(Word(text=delimiter + prefix + content, start=start, end=end, probability=confidence))
        prefix, glue = "", False
    return words, joins


def _connection_closed(client: Any) -> bool:
    # The SDK reports a dropped connection only through this event (its receive loop logs and
    # swallows the error); without it a drop surfaces later, as a send error or a timeout.
    closed = getattr(client, "_closed_evt", None)
    return bool(closed is not None and closed.is_set())


class CloudBackend(StreamingBackend):
    """Speechmatics real-time transcription; available when an API key is configured."""

    name = "cloud"

    def __init__(self, options: CloudBackendOptions | None = None) -> None:
        self._options = options or CloudBackendOptions()
        if self._options.operating_point not in OPERATING_POINTS:
            raise ConfigurationError(
                f"cloud operating point '{self._options.operating_point}' is not one of {', '.join(OPERATING_POINTS)}"
            )
        low, high = MAX_DELAY_RANGE
        if not low <= self._options.max_delay <= high:
            raise ConfigurationError(f"cloud max_delay must be between {low} and {high} s")
        if self._options.default_language not in LANGUAGES:
            raise ConfigurationError(f"cloud default language '{self._options.default_language}' is not supported")
        self._sdk_installed = importlib.util.find_spec("speechmatics.rt") is not None

    @property
    def options(self) -> CloudBackendOptions:
        return self._options

    def info(self) -> BackendInfo:
        reason: str | None = None
        if not self._options.api_key:
            reason = "no SPEECHMATICS_API_KEY configured"
        elif not self._sdk_installed:
            reason = "the speechmatics-rt package is not installed"
        host = urlsplit(self._options.url or DEFAULT_URL).netloc
        return BackendInfo(
            name=self.name,
            available=reason is None,
            reason=reason,
            model=self._options.operating_point,
            device="cloud",
            device_name=f"Speechmatics real-time ({host})",
            multilingual=True,
            languages=tuple(sorted(LANGUAGES)),
            tasks=("transcribe",),
        )

    def validate(self, options: StreamOptions) -> None:
        if options.language == "auto":
            options = replace(options, language=None)
        super().validate(options)

    def open_stream(self, options: StreamOptions) -> CloudStream:
        """Connect and start recognition; blocks up to ``connect_timeout`` (call it off the
        event loop). Raises :class:`CloudError` (``cloud_*``) when the service refuses."""
        self.validate(options)
        language = options.language if options.language != "auto" else None
        stream = CloudStream(
            self._options,
            speechmatics_language(language, self._options.default_language),
            announce_language=self._options.default_language if language is None else None,
        )
        try:
            stream.wait_started()
        except BaseException:
            stream.close()
            raise
        return stream
