"""Audio in, mono float32 16 kHz out: the one place where conversion happens.

Everything after this module sees ``np.ndarray`` of ``float32`` at :data:`SAMPLE_RATE`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from backends.base import SAMPLE_RATE
from backends.errors import InvalidAudio, InvalidRequest

ENCODINGS: dict[str, np.dtype] = {
    "pcm_s16le": np.dtype("<i2"),
    "pcm_f32le": np.dtype("<f4"),
}
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000


@dataclass(frozen=True)
class AudioFormat:
    """What a client announced in ``start``."""

    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"

    @classmethod
    def parse(cls, sample_rate: object, encoding: object) -> AudioFormat:
        """Validate client-supplied values; raise :class:`InvalidRequest` with a clear code."""
        if sample_rate is None:
            sample_rate = SAMPLE_RATE
        if (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, (int, float))
            or not math.isfinite(sample_rate)  # JSON clients may send NaN or Infinity
            or sample_rate != int(sample_rate)
        ):
            raise InvalidRequest(f"sample_rate must be an integer, got {sample_rate!r}", code="invalid_sample_rate")
        if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
            raise InvalidRequest(
                f"sample_rate {int(sample_rate)} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz",
                code="invalid_sample_rate",
            )
        encoding = encoding or "pcm_s16le"
        if not isinstance(encoding, str) or encoding not in ENCODINGS:
            raise InvalidRequest(
                f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}", code="invalid_encoding"
            )
        return cls(sample_rate=int(sample_rate), encoding=str(encoding))

    @property
    def bytes_per_sample(self) -> int:
        return ENCODINGS[self.encoding].itemsize

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * ENCODINGS[self.encoding].itemsize


def decode_pcm(payload: object, encoding: str = "pcm_s16le") -> np.ndarray:
    """Decode one binary ``audio`` payload to float32 in [-1, 1] at its own sample rate."""
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    if not isinstance(payload, (bytes, bytearray)):
        raise InvalidAudio(
            f"audio must be a binary payload (ArrayBuffer/bytes) of {encoding}, got {type(payload).__name__}"
        )
    if len(payload) == 0:
        raise InvalidAudio("audio payload is empty")
    dtype = ENCODINGS[encoding]
    if len(payload) % dtype.itemsize:
        raise InvalidAudio(
            f"audio payload has {len(payload)} bytes, not a multiple of {dtype.itemsize} ({encoding});"
            " the whole payload was rejected"
        )
    samples = np.frombuffer(payload, dtype=dtype)
    if dtype.kind == "i":
        return samples.astype(np.float32) / 32768.0
    if not np.all(np.isfinite(samples)):
        raise InvalidAudio("audio payload contains NaN or infinite samples; the whole payload was rejected")
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


class Resampler:
    """Streaming resampler to 16 kHz (libswresample through PyAV), stateful across chunks.

    A stateless per-chunk resample would click at every chunk boundary; swresample keeps its
    filter history between calls.
    """

    def __init__(self, input_rate: int) -> None:
        self.input_rate = input_rate
        self._resampler = None
        if input_rate != SAMPLE_RATE:
            import av

            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return audio
        import av

        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.input_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still inside the filter (call once at the end of a stream)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


def load_audio(source: str | bytes | io.IOBase, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file (any format FFmpeg reads) to mono float32 16 kHz; :class:`InvalidAudio` if
    not audio, or (code ``audio_too_long``) if longer than ``max_seconds``."""
    import av

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    too_long = InvalidAudio(
        f"the audio is longer than the limit of {max_seconds or 0:g} s (server option --max-file-seconds)",
        code="audio_too_long",
    )
    chunks: list[np.ndarray] = []  # int16
    total = 0
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            # A few compressed megabytes can hold days of silence: refuse what the container
            # says is too long before decoding, and stop decoding at the limit if it lied.
            if limit is not None and container.duration is not None and container.duration / av.time_base > max_seconds:
                raise too_long
            # s16 as faster-whisper does: FFmpeg mixes stereo to mono as the channels' mean for
            # s16, but as their sum over sqrt(2) for float output (3 dB louder than the input).
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in _valid_frames(container.decode(stream)):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if limit is not None and total > limit:
                    raise too_long
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except (av.error.FFmpegError, ValueError, IndexError, StopIteration) as exc:
        raise InvalidAudio(f"could not decode audio: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _valid_frames(frames):
    """Skip frames FFmpeg cannot decode (a damaged stretch), as faster-whisper does."""
    import av

    iterator = iter(frames)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue
