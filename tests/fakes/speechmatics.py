"""A fake Speechmatics real-time server on loopback, for tests.

Written from the public API reference (docs.speechmatics.com/api-ref/realtime-transcription-websocket
and the AsyncAPI spec ``spec/realtime.yaml`` of github.com/speechmatics/docs):

* the handshake needs ``Authorization: Bearer <key>``; a bad key gets ``401 Unauthorized``
  (or, with ``reject_key="in_band"``, an ``Error`` of type ``not_authorised`` and close 4001);
* the first message must be a valid ``StartRecognition`` (``audio_format`` and
  ``transcription_config``); it is answered by ``RecognitionStarted``;
* each binary ``AddAudio`` frame is answered by ``AudioAdded`` with its ``seq_no`` (1, 2, ...);
* ``EndOfStream.last_seq_no`` must equal the number of frames received; the remaining finals
  follow, then ``EndOfTranscript``;
* ``ForceEndOfUtterance`` (optional ``timestamp``, seconds >= 0) is answered by an
  ``AddTranscript`` of the words received so far and an ``EndOfUtterance``;
* after an ``Error`` the connection is closed.

Transcripts come from a reference transcript (``utterances``: ``start``, ``end``, ``text``):
as the received audio passes a word's start it appears in an ``AddPartialTranscript``; once it
passes an utterance's end plus ``max_delay`` the utterance is sent as an ``AddTranscript`` with
word and punctuation results. All times are seconds of audio *received* (pcm_s16le, 16 kHz).

Scenario knobs: ``reject_key``, ``quota_exceeded`` (at start), ``fail_after`` seconds of audio
(an abrupt drop, or an ``Error`` of type ``fail_with`` and its close code), ``ack_delay``
(slow acknowledgements; ``math.inf``: never), ``start_delay`` (before ``RecognitionStarted``),
``drop_on_force_end`` (the connection dies when a paused client's ``ForceEndOfUtterance`` comes).

Use it as a context manager::

    with FakeSpeechmatics(load_utterances(path)) as fake:
        backend = CloudBackend(CloudBackendOptions(api_key=fake.api_key, url=fake.url))
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2
# Speechmatics real-time language codes (docs.speechmatics.com/speech-to-text/languages)
LANGUAGES = frozenset(
    {
        "ar", "ba", "be", "bg", "bn", "ca", "cmn", "cs", "cy", "da", "de", "el", "en", "eo", "es", "et",
        "eu", "fa", "fi", "fr", "ga", "gl", "he", "hi", "hr", "hu", "ia", "id", "it", "ja", "ko", "lt",
        "lv", "mn", "mr", "ms", "mt", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sl", "sv", "sw", "ta",
        "th", "tl", "tr", "ug", "uk", "ur", "vi", "yue",
    }
)  # fmt: skip
MODELS = frozenset({"standard", "enhanced"})
# Close codes that follow an in-band Error (codes the reference names; others: 1011).
CLOSE_CODES = {
    "not_authorised": 4001,
    "invalid_model": 4004,
    "quota_exceeded": 4005,
    "timelimit_exceeded": 4006,
    "job_error": 4013,
    "idle_timeout": 1008,
    "session_timeout": 1008,
    "invalid_message": 1003,
    "protocol_error": 1003,
    "invalid_audio_type": 1003,
    "invalid_config": 1003,
}
_LEADING = "\"'([¿¡…"
_TRAILING = ".,!?;:\"')]…"


@dataclass(frozen=True)
class Utterance:
    start: float
    end: float
    text: str


def load_utterances(path: str | Path) -> list[Utterance]:
    """The utterances of a corpus reference JSON (``{"utterances": [{start, end, text}]}``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Utterance(float(u["start"]), float(u["end"]), str(u["text"])) for u in data["utterances"]]


@dataclass(frozen=True)
class _Token:
    kind: str  # word | punctuation
    content: str
    start: float
    end: float
    attaches_to: str = "none"

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "type": self.kind,
            "start_time": round(self.start, 3),
            "end_time": round(self.end, 3),
            "alternatives": [
                {"content": self.content, "confidence": 0.95 if self.kind == "word" else 1.0, "language": "en"}
            ],
        }
        if self.kind == "punctuation":
            result["attaches_to"] = self.attaches_to
            result["is_eos"] = self.content in ".?!"
        return result


def tokenize(utterance: Utterance) -> list[_Token]:
    """Word and punctuation results for an utterance, word times spread over its span by length."""
    pieces = utterance.text.split()
    weights = [len(re.sub(r"\W", "", piece)) + 1 for piece in pieces]
    total = sum(weights) or 1
    tokens: list[_Token] = []
    t = utterance.start
    for piece, weight in zip(pieces, weights, strict=True):
        duration = (utterance.end - utterance.start) * weight / total
        start, end = t, t + duration
        t = end
        core = piece.lstrip(_LEADING)
        leading = piece[: len(piece) - len(core)]
        stripped = core.rstrip(_TRAILING)
        trailing = core[len(stripped) :]
        if not stripped:  # punctuation only, e.g. "..."
            attach = "previous" if tokens else "next"
            tokens.append(_Token("punctuation", piece, start, start, attach))
            continue
        if leading:
            tokens.append(_Token("punctuation", leading, start, start, "next"))
        tokens.append(_Token("word", stripped, start, end))
        if trailing:
            tokens.append(_Token("punctuation", trailing, end, end, "previous"))
    return tokens


def transcript_of(tokens: list[_Token]) -> str:
    """``metadata.transcript`` as the service formats it (trailing space included)."""
    text = ""
    glue = False  # the previous token attaches to the next one
    for token in tokens:
        if token.kind == "punctuation" and token.attaches_to == "previous":
            text += token.content
        else:
            text += ("" if glue or not text else " ") + token.content
        glue = token.kind == "punctuation" and token.attaches_to == "next"
    return text + " " if text else ""


@dataclass
class FakeSession:
    """What one connection did, for assertions."""

    authorization: str | None = None
    start_message: dict[str, Any] | None = None
    frames: int = 0
    audio_bytes: int = 0
    frames_before_start: int = 0  # AddAudio received before RecognitionStarted was sent
    acks_sent: int = 0
    max_unacked_bytes: int = 0
    last_seq_no: int | None = None
    finals: list[str] = field(default_factory=list)
    partials: int = 0
    forced: list[float | None] = field(default_factory=list)  # ForceEndOfUtterance timestamps
    end_of_transcript: bool = False
    error: str | None = None  # the Error type sent, if any
    dropped: bool = False
    violations: list[str] = field(default_factory=list)
    done: bool = False  # the connection is over

    @property
    def received_seconds(self) -> float:
        return self.audio_bytes / (SAMPLE_RATE * BYTES_PER_SAMPLE)


class FakeSpeechmatics:
    """The fake server; ``url`` and ``api_key`` are what a client needs."""

    def __init__(
        self,
        utterances: list[Utterance] | tuple[Utterance, ...] = (),
        *,
        api_key: str = "test-key",
        reject_key: str = "http",  # http | in_band
        quota_exceeded: bool = False,
        fail_after: float | None = None,
        fail_with: str | None = None,  # None: drop the connection without a close frame
        ack_delay: float = 0.0,
        start_delay: float = 0.0,
        drop_on_force_end: bool = False,
    ) -> None:
        self.utterances = list(utterances)
        self.api_key = api_key
        self.reject_key = reject_key
        self.quota_exceeded = quota_exceeded
        self.fail_after = fail_after
        self.fail_with = fail_with
        self.ack_delay = ack_delay
        self.start_delay = start_delay
        self.drop_on_force_end = drop_on_force_end
        self.sessions: list[FakeSession] = []
        self.rejected_handshakes = 0
        self._tokens = [tokenize(u) for u in self.utterances]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2"

    def __enter__(self) -> FakeSpeechmatics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-speechmatics", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def wait_for_sessions(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections finished (their handler returned)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for s in self.sessions if s.done) >= count:
                return
            time.sleep(0.01)
        raise TimeoutError(f"{count} fake Speechmatics sessions did not finish within {timeout} s: {self.sessions}")

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        # A client that fails may not answer a close frame at once; websockets' default waits
        # 10 s for it, which made shutting the fake down race its own 10 s bound on a slow CI VM.
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check_key, close_timeout=2)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _check_key(self, connection: Any, request: Any) -> Any:
        if self.reject_key == "http" and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.rejected_handshakes += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "401 Authorization Required\n")
        return None

    async def _handle(self, ws: Any) -> None:
        session = FakeSession(authorization=ws.request.headers.get("Authorization"))
        self.sessions.append(session)
        try:
            await _Connection(self, ws, session).run()
        except Exception as exc:  # the test reads violations; the client sees a closed socket
            session.violations.append(f"fake server error: {exc!r}")
            logger.exception("fake Speechmatics handler failed")
        finally:
            session.done = True


class _Connection:
    """The protocol state of one client connection."""

    def __init__(self, server: FakeSpeechmatics, ws: Any, session: FakeSession) -> None:
        self.server = server
        self.ws = ws
        self.session = session
        self.started = False
        self.max_delay = 4.0
        self.partials_enabled = False
        self.next_final = 0  # index of the first utterance not yet finalised
        self.final_until = 0.0  # words starting before this were finalised (a forced end)
        self.partial_text: str | None = None
        self.frame_ends: list[int] = []  # audio bytes received up to each frame
        self.ack_queue: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        self.closing = False

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        acker = asyncio.create_task(self._acknowledge())
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self._on_audio(message)
                else:
                    await self._on_text(message)
                if self.closing:
                    return
        except ConnectionClosed:
            pass
        finally:
            acker.cancel()

    async def _error(self, error_type: str, reason: str) -> None:
        self.session.error = error_type
        await self.ws.send(json.dumps({"message": "Error", "type": error_type, "reason": reason}))
        await self.ws.close(CLOSE_CODES.get(error_type, 1011), error_type.replace("_", " "))
        self.closing = True

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            await self._error("invalid_message", "message is not JSON")
            return
        kind = message.get("message") if isinstance(message, dict) else None
        if kind == "StartRecognition":
            await self._start(message)
        elif kind == "EndOfStream":
            await self._end_of_stream(message)
        elif kind == "ForceEndOfUtterance" and self.started:
            await self._force_end_of_utterance(message)
        elif not self.started:
            await self._error("protocol_error", f"{kind} before StartRecognition")
        else:
            self.session.violations.append(f"unexpected message {kind!r}")
            await self._error("invalid_message", f"unsupported message {kind!r}")

    async def _start(self, message: dict[str, Any]) -> None:
        session = self.session
        if session.start_message is not None:
            await self._error("protocol_error", "StartRecognition sent twice")
            return
        session.start_message = message
        audio_format = message.get("audio_format")
        config = message.get("transcription_config")
        if audio_format != {"type": "raw", "encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}:
            session.violations.append(f"audio_format {audio_format!r}")
            await self._error("invalid_audio_type", f"audio format {audio_format!r} is not supported here")
            return
        if not isinstance(config, dict) or not isinstance(config.get("language"), str):
            session.violations.append(f"transcription_config {config!r}")
            await self._error("invalid_config", "transcription_config.language is required")
            return
        if config["language"] not in LANGUAGES:
            await self._error("invalid_model", f"language {config['language']!r} is not available")
            return
        model = config.get("model", config.get("operating_point", "standard"))
        max_delay = config.get("max_delay", 4.0)
        partials = config.get("enable_partials", False)
        if model not in MODELS or not isinstance(max_delay, (int, float)) or not 0.7 <= max_delay <= 4.0:
            session.violations.append(f"transcription_config {config!r}")
            await self._error("invalid_config", "unsupported model or max_delay")
            return
        if not isinstance(partials, bool):
            session.violations.append(f"enable_partials {partials!r}")
            await self._error("invalid_config", "enable_partials must be a boolean")
            return
        if self.server.reject_key == "in_band" and session.authorization != f"Bearer {self.server.api_key}":
            await self._error("not_authorised", "Not authorised")
            return
        if self.server.quota_exceeded:
            await self._error("quota_exceeded", "Quota exceeded")
            return
        self.max_delay = float(max_delay)
        self.partials_enabled = partials
        if self.server.start_delay:
            await asyncio.sleep(self.server.start_delay)
        self.started = True
        await self.ws.send(
            json.dumps(
                {
                    "message": "RecognitionStarted",
                    "id": f"fake-{len(self.server.sessions)}",
                    "language_pack_info": {"language_description": config["language"], "word_delimiter": " "},
                }
            )
        )

    async def _on_audio(self, data: bytes) -> None:
        session = self.session
        if not self.started:
            session.frames_before_start += 1
            session.violations.append("AddAudio before RecognitionStarted")
            if session.start_message is None:
                await self._error("protocol_error", "AddAudio before StartRecognition")
            return
        if len(data) % BYTES_PER_SAMPLE:
            session.violations.append(f"AddAudio of {len(data)} bytes (not whole pcm_s16le samples)")
        session.frames += 1
        session.audio_bytes += len(data)
        self.frame_ends.append(session.audio_bytes)
        unacked = session.audio_bytes - (self.frame_ends[session.acks_sent - 1] if session.acks_sent else 0)
        session.max_unacked_bytes = max(session.max_unacked_bytes, unacked)
        if math.isfinite(self.server.ack_delay):
            self.ack_queue.put_nowait((time.monotonic() + self.server.ack_delay, session.frames))
        await self._transcribe(session.received_seconds, final=False)
        fail_after = self.server.fail_after
        if fail_after is not None and session.received_seconds >= fail_after:
            if self.server.fail_with is None:
                session.dropped = True
                self.ws.transport.abort()  # network loss: no close frame
                self.closing = True
            else:
                await self._error(self.server.fail_with, f"simulated {self.server.fail_with}")

    async def _acknowledge(self) -> None:
        while True:
            due, seq_no = await self.ack_queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.send(json.dumps({"message": "AudioAdded", "seq_no": seq_no}))
            self.session.acks_sent = seq_no

    async def _end_of_stream(self, message: dict[str, Any]) -> None:
        session = self.session
        if not self.started:
            await self._error("protocol_error", "EndOfStream before RecognitionStarted")
            return
        session.last_seq_no = message.get("last_seq_no")
        if session.last_seq_no != session.frames:
            session.violations.append(f"EndOfStream.last_seq_no {session.last_seq_no} != {session.frames} frames")
        await self._transcribe(session.received_seconds, final=True)
        session.end_of_transcript = True  # before sending: the client may act on it at once
        await self.ws.send(json.dumps({"message": "EndOfTranscript"}))

    async def _force_end_of_utterance(self, message: dict[str, Any]) -> None:
        timestamp = message.get("timestamp")
        if timestamp is not None and (not isinstance(timestamp, (int, float)) or timestamp < 0):
            self.session.violations.append(f"ForceEndOfUtterance.timestamp {timestamp!r}")
            await self._error("invalid_message", "timestamp must be a number >= 0")
            return
        self.session.forced.append(timestamp)
        if self.server.drop_on_force_end:
            self.session.dropped = True
            self.ws.transport.abort()  # network loss: no close frame
            self.closing = True
            return
        received = self.session.received_seconds
        await self._transcribe(received, final=False, forced=True)
        metadata = {"start_time": round(received, 3), "end_time": round(received, 3)}
        await self.ws.send(json.dumps({"message": "EndOfUtterance", "format": "2.9", "metadata": metadata}))

    async def _transcribe(self, received: float, *, final: bool, forced: bool = False) -> None:
        """Send the finals the received audio allows, then the partial of what is in progress.

        ``final`` (end of stream) and ``forced`` (ForceEndOfUtterance) finalise every word
        received so far, even those of an utterance still in progress.
        """
        tokens_by_utterance = self.server._tokens
        while self.next_final < len(self.server.utterances):
            utterance = self.server.utterances[self.next_final]
            pending = [t for t in tokens_by_utterance[self.next_final] if t.start >= self.final_until]
            if final or forced:
                tokens = [t for t in pending if t.start < received]
                if not tokens:
                    break
            elif received >= utterance.end + self.max_delay:
                tokens = pending
            else:
                break
            if tokens:
                await self._send_transcript("AddTranscript", tokens)
                self.session.finals.append(transcript_of(tokens).strip())
            if len(tokens) < len(pending):  # the rest of this utterance is still to come
                self.final_until = received
                break
            self.next_final += 1
        if not self.partials_enabled or final:
            return
        tokens = []
        for index in range(self.next_final, len(self.server.utterances)):
            tokens += [
                t
                for t in tokens_by_utterance[index]
                if self.final_until <= t.start < received and t.end <= received + 0.3
            ]
        text = transcript_of(tokens)
        if text != self.partial_text:
            self.partial_text = text
            await self._send_transcript("AddPartialTranscript", tokens, at=received)
            self.session.partials += 1

    async def _send_transcript(self, kind: str, tokens: list[_Token], at: float | None = None) -> None:
        start = tokens[0].start if tokens else (at or 0.0)
        end = tokens[-1].end if tokens else (at or 0.0)
        await self.ws.send(
            json.dumps(
                {
                    "message": kind,
                    "format": "2.9",
                    "metadata": {
                        "start_time": round(start, 3),
                        "end_time": round(end, 3),
                        "transcript": transcript_of(tokens),
                    },
                    "results": [t.result() for t in tokens],
                }
            )
        )
