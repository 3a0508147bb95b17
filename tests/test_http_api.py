"""POST /api/transcribe, GET /api/status, /health and /ready, with the real model."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from backends.base import DecodeOptions
from backends.local import LocalBackend, LocalBackendOptions
from bench.wer import wer
from server.app import create_app
from server.config import Config
from tests.conftest import Fixture
from tests.file_helpers import write_mp3, write_video_only, write_wav
from tests.streaming import TestClientRecorder


@pytest.fixture
def clip(en00: Fixture) -> Fixture:
    return en00.clip(15.0)


@pytest.fixture
def clip_wav(tmp_path: Path, clip: Fixture) -> bytes:
    return write_wav(tmp_path / "clip.wav", clip.pcm).read_bytes()


def post(client, data: bytes, name: str = "clip.wav", query: str = "", **fields):
    return client.post(f"/api/transcribe{query}", data={"file": (io.BytesIO(data), name), **fields})


def test_json_transcript(app, clip: Fixture, clip_wav: bytes):
    response = post(app.test_client(), clip_wav)
    assert response.status_code == 200, response.get_json()
    assert response.content_type == "application/json"
    body = response.get_json()
    assert set(body) == {"language", "duration", "segments", "text"}
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(15.0, abs=0.05)
    assert wer(clip.text, body["text"]) < 0.25
    starts = [s["start"] for s in body["segments"]]
    assert starts == sorted(starts)
    assert all(0 <= s["start"] < s["end"] <= 15.05 and "words" not in s for s in body["segments"])


def test_word_timestamps_and_analysis(app, clip: Fixture, clip_wav: bytes):
    response = post(app.test_client(), clip_wav, query="?word_timestamps=true", analysis="1", language="en")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    for segment in body["segments"]:
        assert segment["words"]
        for word in segment["words"]:
            assert segment["start"] - 0.05 <= word["start"] <= word["end"] <= segment["end"] + 0.05
    # Words follow each other without overlap, and none is shown as an instant (the alignment
    # collapses about 2% of them: server/word_times.py).
    words = [w for s in body["segments"] for w in s["words"]]
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert all(w["end"] - w["start"] >= 0.02 for w in words), words
    analysis = body["analysis"]
    assert analysis["transcript"] == body["text"]
    assert analysis["duration"] == pytest.approx(15.0, abs=0.05)
    assert analysis["speaking_time_source"] == "words"
    # 8.43 s of reference speech in 15 s; 25 reference words.
    assert 7.0 <= analysis["speaking_time"] <= 11.0
    assert abs(analysis["words"] - 25) <= 5


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("srt", "application/x-subrip"), ("vtt", "text/vtt"), ("txt", "text/plain")],
)
def test_subtitle_formats(app, tmp_path: Path, clip: Fixture, fmt: str, content_type: str):
    mp3 = write_mp3(tmp_path / "clip.mp3", clip.pcm).read_bytes()  # and a compressed upload
    response = post(app.test_client(), mp3, name="talk.mp3", format=fmt)
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == content_type and response.mimetype_params["charset"] == "utf-8"
    assert response.headers["Content-Disposition"] == f"inline; filename=\"talk.{fmt}\"; filename*=UTF-8''talk.{fmt}"
    text = response.get_data(as_text=True)
    if fmt == "srt":
        text = " ".join(s.content for s in srt.parse(text, ignore_errors=False))
    elif fmt == "vtt":
        text = " ".join(c.text for c in webvtt.from_string(text))
    assert wer(clip.text, text) < 0.25


def test_bad_requests(app, tmp_path: Path, clip_wav: bytes):
    client = app.test_client()

    def error(response, status: int) -> dict:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.content_type == "application/json"
        return response.get_json()["error"]

    garbage = error(post(client, b"RIFF\x00\x00\x00\x00WAVEjunk" * 100, name="noise.wav"), 400)
    assert garbage["code"] == "invalid_audio" and garbage["message"].startswith("noise.wav: could not decode audio")
    assert "None" not in garbage["message"]
    text = error(post(client, b"hello, this is a text file\n", name="notes.txt"), 400)
    assert text["code"] == "invalid_audio"
    silent_video = write_video_only(tmp_path / "screen.mp4").read_bytes()
    video = error(post(client, silent_video, name="screen.mp4"), 400)
    assert video == {"code": "invalid_audio", "message": "screen.mp4: the file has no audio stream"}
    assert error(client.post("/api/transcribe", data={"other": "x"}), 400)["code"] == "invalid_request"
    assert error(post(client, clip_wav, format="docx"), 400)["code"] == "invalid_format"
    assert error(post(client, clip_wav, format="srt", analysis="true"), 400)["code"] == "invalid_format"
    assert error(post(client, clip_wav, task="summarise"), 400)["code"] == "unsupported_task"
    assert error(post(client, clip_wav, word_timestamps="maybe"), 400)["code"] == "invalid_request"
    # tiny.en: English only.
    assert error(post(client, clip_wav, language="fr"), 400)["code"] == "unsupported_language"
    assert error(post(client, clip_wav, task="translate"), 400)["code"] == "unsupported_task"


def test_upload_size_limit(local_backend, en00: Fixture, tmp_path: Path):
    small = write_wav(tmp_path / "small.wav", en00.clip(1.0).pcm).read_bytes()  # 32 KB
    large = write_wav(tmp_path / "large.wav", en00.clip(3.0).pcm).read_bytes()  # 96 KB
    app = create_app(Config(async_mode="threading", max_upload_bytes=50_000), backends={"local": local_backend})
    client = app.test_client()
    response = post(client, large)
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "payload_too_large" and "50000 bytes" in error["message"]
    assert post(client, small).status_code == 200


def test_audio_length_limit(local_backend, en00: Fixture, tmp_path: Path):
    # A few compressed megabytes can hold hours of audio: the limit is on seconds, too.
    app = create_app(Config(async_mode="threading", max_file_seconds=2.0), backends={"local": local_backend})
    client = app.test_client()
    for path in (
        write_wav(tmp_path / "long.wav", en00.clip(3.0).pcm),
        write_mp3(tmp_path / "long.mp3", en00.clip(3.0).pcm),
    ):
        response = post(client, path.read_bytes(), name=path.name)
        assert response.status_code == 413, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "audio_too_long" and "2 s" in error["message"] and path.name in error["message"]
    assert post(client, write_wav(tmp_path / "short.wav", en00.clip(1.5).pcm).read_bytes()).status_code == 200


def test_a_file_name_outside_latin_1_names_the_subtitles(app, en00: Fixture, tmp_path: Path):
    wav = write_wav(tmp_path / "clip.wav", en00.clip(2.5).pcm).read_bytes()
    response = post(app.test_client(), wav, name="会议 Q3.wav", format="srt", language=" ")  # blank: auto
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Disposition"] == (
        "inline; filename=\"__ Q3.srt\"; filename*=UTF-8''%E4%BC%9A%E8%AE%AE%20Q3.srt"
    )


def test_the_http_api_allows_the_origins_socket_io_allows(local_backend, clip_wav: bytes):
    app = create_app(
        Config(async_mode="threading", cors_origins=("https://app.example",)), backends={"local": local_backend}
    )
    client = app.test_client()
    allowed = {"Origin": "https://app.example"}
    status = client.get("/api/status", headers=allowed)
    assert status.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in status.headers["Vary"]
    preflight = client.options("/api/transcribe", headers={**allowed, "Access-Control-Request-Method": "POST"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    upload = client.post("/api/transcribe", data={"file": (io.BytesIO(clip_wav), "clip.wav")}, headers=allowed)
    assert upload.status_code == 200 and upload.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = client.get("/api/status", headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # Same origin only (the default): no CORS headers at all.
    default = create_app(Config(async_mode="threading"), backends={"local": local_backend}).test_client()
    assert "Access-Control-Allow-Origin" not in default.get("/api/status", headers=allowed).headers


def test_health_and_ready(app):
    client = app.test_client()
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_not_ready_before_the_model_is_loaded():
    app = create_app(Config(async_mode="threading"), backends={"local": LocalBackend(LocalBackendOptions())})
    client = app.test_client()
    assert client.get("/health").status_code == 200
    response = client.get("/ready")
    assert response.status_code == 503 and response.get_json() == {"ready": False}
    response = post(client, b"x")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "backend_unavailable"


def test_status_shows_sessions_and_backlog(app, socketio, en00: Fixture):
    client = app.test_client()
    status = client.get("/api/status").get_json()
    assert status["version"] and status["uptime"] > 0
    assert status["model"] == "tiny.en" and status["device"] == "cpu" and status["compute_type"] == "int8"
    assert status["backends"]["local"]["available"] is True
    assert status["sessions"] == {"active": 0, "max": 4, "by_backend": {}}
    assert status["queue"]["files"]["running"] == 0 and status["queue"]["files"]["queued"] == 0

    live = TestClientRecorder(socketio.test_client(app))
    live.client.emit("start", {"language": "en"})
    live.wait_for("ready")
    live.client.emit("audio", en00.clip(6.0).pcm)  # 6 s at once: a backlog until decoded
    status = client.get("/api/status").get_json()
    assert status["sessions"]["active"] == 1 and status["sessions"]["by_backend"] == {"local": 1}
    (session,) = status["queue"]["sessions"]
    assert session["backend"] == "local" and session["duration"] == pytest.approx(6.0)
    assert 0 <= session["backlog_seconds"] <= 6.0
    live.client.emit("stop")
    live.wait_for("stopped", timeout=60)
    assert client.get("/api/status").get_json()["sessions"]["active"] == 0


def test_no_waiting_files_still_takes_one_at_a_time(local_backend, en00: Fixture, tmp_path: Path):
    app = create_app(Config(async_mode="threading", max_file_jobs=0), backends={"local": local_backend})
    wav = write_wav(tmp_path / "clip.wav", en00.clip(2.0).pcm).read_bytes()
    assert post(app.test_client(), wav).status_code == 200


def test_file_jobs_run_one_at_a_time_and_a_full_queue_is_refused(local_backend, clip_wav: bytes):
    app = create_app(Config(async_mode="threading", max_file_jobs=1), backends={"local": local_backend})
    jobs = app.extensions["livescribe.api"].file_jobs
    release = threading.Event()
    blocker = threading.Thread(target=jobs.run, args=("blocker", 0, release.wait))
    blocker.start()
    responses = {}

    def upload() -> None:
        responses["queued"] = post(app.test_client(), clip_wav)

    try:
        deadline = time.monotonic() + 10
        while jobs.status()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = threading.Thread(target=upload)
        waiting.start()
        while jobs.status()["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        status = app.test_client().get("/api/status").get_json()["queue"]["files"]
        assert status["running"] == 1 and status["current"]["file"] == "blocker"
        assert status["queued"] == 1 and status["waiting"][0]["file"] == "clip.wav"

        refused = post(app.test_client(), clip_wav)
        assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "server_busy"
        assert "queued" not in responses  # still waiting behind the blocker
    finally:
        release.set()
        blocker.join(10)
    waiting.join(60)
    assert responses["queued"].status_code == 200
    assert jobs.status()["running"] == 0 and jobs.status()["queued"] == 0


def test_file_transcription_waits_for_live_decodes(local_backend, monkeypatch, en00: Fixture):
    """While a live decode runs, a file transcription does not start its next window."""
    entered, release = threading.Event(), threading.Event()
    real_decode = local_backend._decode

    def slow_decode(audio, options):
        entered.set()
        release.wait(30)
        return real_decode(audio, options)

    monkeypatch.setattr(local_backend, "_decode", slow_decode)
    live = threading.Thread(target=local_backend.decode, args=(np.zeros(16000, dtype=np.float32), DecodeOptions()))
    live.start()
    assert entered.wait(10) and local_backend.live_decodes == 1

    progress: list[float] = []
    done = threading.Event()
    clip = en00.clip(10.0)
    file_job = threading.Thread(
        target=lambda: (local_backend.transcribe(clip.audio, DecodeOptions(language="en"), progress.append), done.set())
    )
    file_job.start()
    time.sleep(1.5)  # ample for a 10 s clip to produce its first segment on this model
    assert progress == [] and not done.is_set()
    release.set()
    live.join(30)
    file_job.join(60)
    assert done.is_set() and progress and progress[-1] == pytest.approx(10.0, abs=0.01)
    assert local_backend.live_decodes == 0
