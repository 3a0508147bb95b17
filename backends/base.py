"""The backend contract: data types, events and the two flavours of backend.

A backend turns mono float32 16 kHz audio into text. There are two flavours:

* :class:`DecoderBackend` decodes a window of audio on request (faster-whisper). The server
  streams it through its own VAD + sliding-window pipeline (``server.pipeline``).
* :class:`StreamingBackend` streams by itself (a cloud API): the server hands it audio and
  collects the events it produces.

Either way the server ends up with a :class:`Stream` (``feed(audio) -> events``,
``flush() -> events``) whose events are the dataclasses below, so clients see the same
event shapes whatever the backend.
"""

from __future__ import annotations

import abc
import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

SAMPLE_RATE = 16000
"""Inside the server audio is always mono float32 at this rate."""

TASKS = ("transcribe", "translate")

_NOT_WORD = re.compile(r"[^\w']+", re.UNICODE)


def word_key(text: str) -> str:
    """Comparison key for words: case, forms of accents and punctuation do not count."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).lower())


@dataclass(frozen=True)
class Word:
    """A word with times in seconds of stream audio."""

    text: str
    start: float
    end: float
    probability: float = 1.0

    def to_payload(self) -> dict:
        return {
            "word": self.text,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "probability": round(self.probability, 3),
        }


@dataclass(frozen=True)
class Segment:
    """A decoded segment; times in seconds relative to the decoded audio's start."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0


@dataclass(frozen=True)
class DecodeOptions:
    """What one decode call needs to know."""

    language: str | None = None  # None: detect
    task: str = "transcribe"
    prompt: str | None = None  # committed text that precedes the audio
    # Words already committed at the start of the audio (times relative to it): the decoder
    # is forced through them (acoustic and textual context at little decoding cost) and the
    # result holds only what follows them.
    prefix: tuple[Word, ...] = ()
    word_timestamps: bool = True
    beam_size: int = 1
    # Encoder frames (10 ms each) to pad the audio to; None keeps Whisper's full 30 s.
    # Fewer frames make a decode several times cheaper (see docs/PIPELINE.md).
    encoder_frames: int | None = None
    # Someone is waiting on this decode (an utterance's first words, its final words): when
    # the backend is busy it goes before other waiting decodes.
    urgent: bool = False


@dataclass(frozen=True)
class DecodeResult:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration: float
    # When the language was detected: the most likely languages, best first.
    language_probs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class StreamOptions:
    """Per-session options validated against the backend's :class:`BackendInfo`."""

    language: str | None = None  # None: detect once, then lock
    task: str = "transcribe"


@dataclass(frozen=True)
class BackendInfo:
    """What a backend can do, reported in ``ready`` and ``/api/status``."""

    name: str
    available: bool
    reason: str | None = None  # why it is unavailable
    model: str | None = None
    device: str | None = None
    device_name: str | None = None
    compute_type: str | None = None
    multilingual: bool = True
    languages: tuple[str, ...] = ()
    tasks: tuple[str, ...] = TASKS

    def to_payload(self) -> dict:
        return {
            "name": self.name,
            "available": self.available,
            "reason": self.reason,
            "model": self.model,
            "device": self.device,
            "device_name": self.device_name,
            "compute_type": self.compute_type,
            "multilingual": self.multilingual,
            "languages": list(self.languages),
            "tasks": list(self.tasks),
        }


# --- events a stream produces -------------------------------------------------------------


@dataclass(frozen=True)
class Partial:
    """The current uncommitted tail; replaces the previous partial (empty text clears it)."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Final:
    """Newly committed text; append only."""

    text: str
    start: float
    end: float
    words: tuple[Word, ...] = ()
    # The text goes on with the previous final's last word (Whisper wrote "touch" and, once
    # that was committed, "touchtone"): join the two without a space.
    joins_previous: bool = False


@dataclass(frozen=True)
class LanguageDetected:
    language: str
    probability: float


@dataclass(frozen=True)
class SpeechActivity:
    """Speech time the stream observed (VAD), used for the end-of-session analysis."""

    start: float
    end: float


Event = Partial | Final | LanguageDetected | SpeechActivity


class Stream(abc.ABC):
    """One session's transcription stream. Times are seconds since the stream's first sample.

    ``feed`` and ``flush`` block (they may run a model or wait on a network) and are always
    called from a worker thread, never from the Socket.IO event loop, one call at a time.
    """

    @abc.abstractmethod
    def feed(self, audio: np.ndarray) -> list[Event]:
        """Accept mono float32 16 kHz audio; return the events it produced."""

    @abc.abstractmethod
    def flush(self) -> list[Event]:
        """Commit everything still pending (end of session) and return the last events."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once, after ``flush`` or on abort."""

    @property
    def committed_until(self) -> float:
        """Seconds of stream audio fully covered by finals (where a failover resumes)."""
        return 0.0

    @property
    def needs_poll(self) -> bool:
        """Whether :meth:`poll` has events or a failure waiting, produced without a ``feed``
        (a streaming service answers on its own time). Cheap and lock-free: the session
        worker asks it while it waits for audio, on the event loop."""
        return False

    def poll(self) -> list[Event]:
        """The events that arrived since the last call, without feeding audio; raises the
        stream's failure as ``feed`` would. Called like ``feed``, when :attr:`needs_poll`."""
        return []

    def pause(self) -> list[Event]:
        """The client stopped sending audio for a while (without ``stop``): finalise the
        utterance in progress as if its speech had ended, and return the events. Audio that
        comes later starts a new utterance. Called like ``feed``; events that come later are
        for :meth:`poll`. The default does nothing."""
        return []


class Backend(abc.ABC):
    """A speech recognition engine shared by all sessions of a server."""

    name: ClassVar[str]

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Capabilities and status; cheap, called for every ``ready``."""

    def validate(self, options: StreamOptions) -> None:
        """Raise :class:`~backends.errors.InvalidRequest` for options this backend cannot do."""
        from backends.errors import BackendUnavailable, InvalidRequest

        info = self.info()
        if not info.available:
            raise BackendUnavailable(f"backend '{self.name}' is unavailable: {info.reason}")
        if options.task not in info.tasks:
            raise InvalidRequest(
                f"task '{options.task}' is not supported by backend '{self.name}' (supported: {', '.join(info.tasks)})",
                code="unsupported_task",
            )
        if options.language is not None and options.language not in info.languages:
            raise InvalidRequest(
                f"language '{options.language}' is not supported by backend '{self.name}' with model '{info.model}'",
                code="unsupported_language",
            )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine at server shutdown."""


class DecoderBackend(Backend):
    """A backend that decodes windows of audio; the server streams it with its pipeline."""

    @abc.abstractmethod
    def decode(self, audio: np.ndarray, options: DecodeOptions) -> DecodeResult:
        """Decode one window (at most 30 s) of mono float32 16 kHz audio."""

    @abc.abstractmethod
    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> DecodeResult:
        """Transcribe audio of any length offline (files, and the reference in benchmarks)."""


class StreamingBackend(Backend):
    """A backend that streams by itself."""

    @abc.abstractmethod
    def open_stream(self, options: StreamOptions) -> Stream:
        """Start a stream; raise :class:`~backends.errors.TranscriptionError` on failure."""
