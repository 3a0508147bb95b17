"""``python -m server.transcribe`` as a user runs it: a subprocess on fixture clips."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import srt
import webvtt

from backends.base import DecodeOptions
from bench.wer import wer
from tests.conftest import Fixture
from tests.file_helpers import write_mp3, write_wav

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.transcribe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_files_in_every_format_with_bad_ones_among_them(tmp_path: Path, en00: Fixture):
    clip = en00.clip(15.0)
    wav = write_wav(tmp_path / "clip.wav", clip.pcm)
    mp3 = write_mp3(tmp_path / "clip-mp3.mp3", clip.pcm)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt this is not audio" * 20)
    missing = tmp_path / "missing.flac"
    out = tmp_path / "out"

    proc = run_cli(str(missing), str(wav), str(bad), str(mp3), "--format", "all", "--output", str(out))

    assert proc.returncode == 1, proc.stderr
    assert f"{missing}: no such file" in proc.stderr
    assert f"{bad}: could not decode audio" in proc.stderr
    # Not a terminal: no progress bar.
    assert "%|" not in proc.stderr and "\r" not in proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in ("clip", "clip-mp3") for ext in ("txt", "srt", "vtt", "json")
    )
    for stem in ("clip", "clip-mp3"):
        document = json.loads((out / f"{stem}.json").read_text())
        assert document["language"] == "en"
        assert document["duration"] == pytest.approx(15.0, abs=0.1)
        starts = [s["start"] for s in document["segments"]]
        assert starts == sorted(starts) and all(0 <= s["start"] < s["end"] <= 15.1 for s in document["segments"])
        assert wer(clip.text, document["text"]) < 0.25
        assert wer(clip.text, (out / f"{stem}.txt").read_text()) < 0.25

        subtitles = list(srt.parse((out / f"{stem}.srt").read_text(), ignore_errors=False))
        assert wer(clip.text, " ".join(s.content for s in subtitles)) < 0.25
        assert subtitles[0].start.total_seconds() == pytest.approx(document["segments"][0]["start"], abs=0.002)
        captions = list(webvtt.read(str(out / f"{stem}.vtt")))
        assert len(captions) == len(subtitles)
        assert wer(clip.text, " ".join(c.text for c in captions)) < 0.25


def test_stdout_output_and_word_timestamps(tmp_path: Path, en00: Fixture):
    clip = en00.clip(10.0)
    wav = write_wav(tmp_path / "clip.wav", clip.pcm)
    proc = run_cli(str(wav), "--format", "json", "--output", "-", "--word-timestamps", "--language", "en")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    words = [w for s in document["segments"] for w in s["words"]]
    assert len(words) >= 10
    assert all(w["start"] <= w["end"] for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert wer(clip.text, " ".join(w["word"] for w in words)) < 0.25


def test_unknown_model_and_unsupported_language_exit_2(tmp_path: Path, en00: Fixture):
    wav = write_wav(tmp_path / "clip.wav", en00.clip(2.0).pcm)
    proc = run_cli(str(wav), "--model", "no-such-model", "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown model 'no-such-model'" in proc.stderr
    proc = run_cli(str(wav), "--language", "fr", "--output", str(tmp_path))
    assert proc.returncode == 2
    assert "language 'fr' is not supported" in proc.stderr
    proc = run_cli(str(wav), "--format", "docx")
    assert proc.returncode == 2 and "unknown format" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]  # nothing written


def test_only_missing_files_fail_without_loading_a_model(tmp_path: Path):
    proc = run_cli(str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "--model", "no-such-model")
    assert proc.returncode == 1
    assert proc.stderr.count("no such file") == 2 and "unknown model" not in proc.stderr


def test_outputs_that_would_clash_or_cannot_be_written_exit_2_before_loading(tmp_path: Path, en00: Fixture):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_wav(tmp_path / "a" / "talk.wav", en00.clip(2.0).pcm)
    second = write_wav(tmp_path / "b" / "talk.wav", en00.clip(2.0).pcm)
    # "--model no-such-model": exit 2 for the model would mean the names were not checked first.
    proc = run_cli(str(first), str(second), "--output", str(tmp_path / "out"), "--model", "no-such-model")
    assert proc.returncode == 2 and "would both be written" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    proc = run_cli(str(first), "--output", str(first / "sub"), "--model", "no-such-model")
    assert proc.returncode == 2 and "--output" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "unknown model" not in proc.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path, en00: Fixture):
    wav = write_wav(tmp_path / "clip.wav", en00.clip(12.0).pcm)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.transcribe", str(wav), "--output", str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, seen
    text = seen.decode(errors="replace")
    assert "clip.wav: 100%|" in text and "12.0/12.0 s audio" in text
    assert (tmp_path / "clip.txt").is_file()


def test_progress_callback_follows_audio_time(local_backend, en00: Fixture):
    clip = en00.clip(20.0)
    reached: list[float] = []
    result = local_backend.transcribe(clip.audio, DecodeOptions(language="en"), progress=reached.append)
    assert len(reached) == len(result.segments) + 1
    assert reached == sorted(reached)
    assert reached[:-1] == [s.end for s in result.segments]
    assert reached[-1] == pytest.approx(20.0, abs=0.01)
