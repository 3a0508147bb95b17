"""Writing fixture audio to files for the file-transcription tests."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, pcm: bytes, rate: int = 16000) -> Path:
    """16-bit mono WAV (the stdlib ``wave`` module)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


def write_video_only(path: Path, seconds: float = 1.0) -> Path:
    """An MP4 with a video track and no sound (a silent screen recording)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        for _ in range(int(25 * seconds)):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


def write_mp3(path: Path, pcm: bytes, rate: int = 16000) -> Path:
    """MP3 at 44.1 kHz stereo through PyAV: a compressed format at another rate and layout."""
    import av

    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    resampler = av.AudioResampler(format="s16p", layout="stereo", rate=44100)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp3", rate=44100)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
