"""Incremental voice activity detection with Silero VAD (faster-whisper's bundled ONNX model).

faster-whisper runs Silero over a whole file at once; a live stream needs the same network run
on *new* audio only, carrying the LSTM state (``h``, ``c``) and the 64-sample context from one
call to the next, so the cost per chunk does not grow with the session.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from backends.base import SAMPLE_RATE

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame Silero v5/v6 expects in front of each frame


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech starts when a frame's probability reaches this
    neg_threshold: float | None = None  # speech may end below this (default threshold - 0.15)
    min_silence: float = 0.3  # seconds below neg_threshold that end an utterance
    speech_pad: float = 0.2  # seconds kept before a start and after an end

    @property
    def end_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(0.01, self.threshold - 0.15)


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" | "end"
    sample: int  # stream sample where speech starts / ends (before padding)


@functools.lru_cache(maxsize=1)
def silero_session():
    """The ONNX session, shared: ``InferenceSession.run`` is thread-safe and state lives outside."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SileroStream:
    """Speech probabilities for consecutive 512-sample frames of one stream."""

    def __init__(self) -> None:
        self._session = silero_session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames = 0  # frames scored so far

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities of the whole frames completed by ``audio`` (leftovers wait)."""
        pending = np.concatenate([self._pending, audio]) if self._pending.size else audio
        count = len(pending) // FRAME
        self._pending = pending[count * FRAME :].copy()
        if count == 0:
            return np.zeros(0, dtype=np.float32)
        frames = pending[: count * FRAME].reshape(count, FRAME).astype(np.float32, copy=False)
        contexts = np.empty((count, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -CONTEXT:]
        batch = np.concatenate([contexts, frames], axis=1)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = frames[-1, -CONTEXT:].copy()
        self.frames += count
        return np.asarray(probs, dtype=np.float32).reshape(-1)


class VoiceActivityDetector:
    """Turns frame probabilities into utterance start/end events (Silero's hysteresis rule)."""

    def __init__(self, options: VadOptions | None = None) -> None:
        self.options = options or VadOptions()
        self._probs = SileroStream()
        self.in_speech = False
        self._silence_since: int | None = None  # first frame of the current silence run
        self._min_silence_frames = max(1, round(self.options.min_silence * SAMPLE_RATE / FRAME))

    def process(self, audio: np.ndarray) -> list[VadEvent]:
        """Feed new audio; return the starts and ends it completes, in order."""
        first = self._probs.frames
        events: list[VadEvent] = []
        for offset, prob in enumerate(self._probs(audio)):
            frame = first + offset
            if not self.in_speech:
                if prob >= self.options.threshold:
                    self.in_speech = True
                    self._silence_since = None
                    events.append(VadEvent("start", frame * FRAME))
                continue
            if prob >= self.options.threshold:
                self._silence_since = None
            elif prob < self.options.end_threshold:
                if self._silence_since is None:
                    self._silence_since = frame
                if frame + 1 - self._silence_since >= self._min_silence_frames:
                    self.in_speech = False
                    events.append(VadEvent("end", self._silence_since * FRAME))
                    self._silence_since = None
        return events

    def end_speech(self) -> None:
        """Leave the speech in progress: the next frame at the threshold starts a new one.

        For a gap in the audio (the client stopped sending): what comes after it does not
        continue the frames before it, so it must not need a silence first to end them.
        """
        self.in_speech = False
        self._silence_since = None

    @property
    def pause_start(self) -> int | None:
        """Stream sample where the current pause began, while it is too short to end the
        utterance; None outside speech or while speech goes on."""
        return self._silence_since * FRAME if self.in_speech and self._silence_since is not None else None

    @property
    def samples_scored(self) -> int:
        return self._probs.frames * FRAME
