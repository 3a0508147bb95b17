"""server.audio: PCM decoding, validation and streaming resampling."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from backends.errors import InvalidAudio, InvalidRequest
from server.audio import AudioFormat, Resampler, decode_pcm, load_audio


def test_s16_decodes_to_unit_floats():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    out = decode_pcm(pcm, "pcm_s16le")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_f32_is_clipped_and_checked():
    out = decode_pcm(np.array([0.25, 2.0, -3.0], dtype="<f4").tobytes(), "pcm_f32le")
    np.testing.assert_allclose(out, [0.25, 1.0, -1.0])
    with pytest.raises(InvalidAudio, match="NaN"):
        decode_pcm(np.array([np.inf], dtype="<f4").tobytes(), "pcm_f32le")


@pytest.mark.parametrize(
    ("payload", "encoding", "message"),
    [
        (b"", "pcm_s16le", "empty"),
        (b"\x00\x00\x00", "pcm_s16le", "multiple of 2"),
        (b"\x00" * 6, "pcm_f32le", "multiple of 4"),
        ("text", "pcm_s16le", "binary"),
        ([1, 2], "pcm_s16le", "binary"),
        (None, "pcm_s16le", "binary"),
    ],
)
def test_bad_payloads_are_rejected_whole(payload, encoding, message):
    with pytest.raises(InvalidAudio, match=message) as raised:
        decode_pcm(payload, encoding)
    assert raised.value.code == "invalid_audio" and not raised.value.fatal


def test_memoryview_and_bytearray_are_binary():
    pcm = np.arange(4, dtype="<i2").tobytes()
    assert len(decode_pcm(memoryview(pcm))) == 4
    assert len(decode_pcm(bytearray(pcm))) == 4


@pytest.mark.parametrize(
    ("rate", "code"),
    [
        (0, "invalid_sample_rate"),
        (7999, "invalid_sample_rate"),
        (192001, "invalid_sample_rate"),
        ("16k", "invalid_sample_rate"),
        (True, "invalid_sample_rate"),
        (16000.5, "invalid_sample_rate"),
    ],
)
def test_audio_format_rejects_absurd_rates(rate, code):
    with pytest.raises(InvalidRequest) as raised:
        AudioFormat.parse(rate, None)
    assert raised.value.code == code


def test_audio_format_defaults_and_encodings():
    assert AudioFormat.parse(None, None) == AudioFormat(16000, "pcm_s16le")
    assert AudioFormat.parse(48000.0, "pcm_f32le").bytes_per_second == 192000
    with pytest.raises(InvalidRequest) as raised:
        AudioFormat.parse(16000, "opus")
    assert raised.value.code == "invalid_encoding"


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streaming_resampler_keeps_length_and_signal(rate):
    t = np.arange(rate * 2) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    resampler = Resampler(rate)
    chunk = rate // 10  # 100 ms, as a browser sends
    pieces = [resampler(tone[i : i + chunk]) for i in range(0, len(tone), chunk)]
    pieces.append(resampler.flush())
    out = np.concatenate(pieces)
    assert abs(len(out) - 32000) <= 2
    # Same tone at 16 kHz (after the filter's small delay), no clicks at chunk boundaries.
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(out) + 64) / 16000)
    rms = min(np.sqrt(np.mean((out[2000:30000] - ideal[2000 - lag : 30000 - lag]) ** 2)) for lag in range(-40, 41))
    assert rms < 0.02


def test_16k_passes_through_untouched():
    audio = np.random.default_rng(0).standard_normal(1600).astype(np.float32)
    resampler = Resampler(16000)
    assert resampler(audio) is audio
    assert resampler.flush().size == 0


def test_load_audio_reads_files_and_rejects_garbage(tmp_path):
    from tests.conftest import FIXTURES

    audio = load_audio(str(FIXTURES / "en-dev-silence-00.wav"))
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 30.0) < 0.01
    bogus = tmp_path / "notes.wav"
    bogus.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(InvalidAudio):
        load_audio(str(bogus))


def test_load_audio_stops_at_its_length_limit(tmp_path):
    from tests.conftest import FIXTURES
    from tests.file_helpers import write_video_only

    path = str(FIXTURES / "en-dev-silence-00.wav")  # 30 s
    assert len(load_audio(path, max_seconds=30.5)) == 30 * 16000
    with pytest.raises(InvalidAudio) as too_long:
        load_audio(path, max_seconds=29.0)
    assert too_long.value.code == "audio_too_long"
    # A stream that does not say how long it is (a WAV of unknown size, read like a pipe)
    # is stopped while decoding.
    data = Path(path).read_bytes()
    data = data[:40] + b"\xff\xff\xff\xff" + data[44:]

    class Pipe:
        def __init__(self) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    assert len(load_audio(Pipe())) == 30 * 16000
    with pytest.raises(InvalidAudio) as still_too_long:
        load_audio(Pipe(), max_seconds=10.0)
    assert still_too_long.value.code == "audio_too_long"
    with pytest.raises(InvalidAudio, match="no audio stream"):
        load_audio(str(write_video_only(tmp_path / "screen.mp4")))
