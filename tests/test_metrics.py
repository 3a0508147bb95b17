"""GET /metrics after a real session, parsed with prometheus_client's own parser."""

from __future__ import annotations

import gc
import io
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.base import DecodeOptions
from server.app import create_app
from server.config import Config
from tests.conftest import Fixture
from tests.file_helpers import write_wav
from tests.streaming import TestClientRecorder, wait_for_words_ending_after


def scrape(app) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from the app's /metrics."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_a_session(app, socketio, en00: Fixture, tmp_path: Path):
    before = scrape(app)
    assert value(before, "livescribe_sessions_total", backend="local") == 0
    assert value(before, "livescribe_sessions_active", backend="local") == 0
    assert value(before, "livescribe_decode_step_seconds_count") == 0

    clip = en00.clip(15.0)
    client = TestClientRecorder(socketio.test_client(app))
    client.client.emit("start", {"language": "en"})
    client.wait_for("ready")
    client.stream(clip.pcm, speed=4.0)
    during = scrape(app)
    client.client.emit("stop")
    client.wait_for("stopped", timeout=60)
    finals = client.named("final")
    after = scrape(app)

    assert value(during, "livescribe_sessions_active", backend="local") == 1
    assert value(after, "livescribe_sessions_active", backend="local") == 0
    assert value(after, "livescribe_sessions_total", backend="local") == 1
    assert value(after, "livescribe_audio_received_seconds_total") == pytest.approx(15.0, abs=0.01)
    assert value(after, "livescribe_audio_transcribed_seconds_total") == pytest.approx(15.0, abs=0.01)
    assert value(during, "livescribe_audio_received_seconds_total") <= 15.0

    decodes = value(after, "livescribe_decode_step_seconds_count")
    assert decodes >= 4  # four utterances, each decoded at least once
    assert 0 < value(after, "livescribe_decode_step_seconds_sum") < 60
    assert value(after, "livescribe_real_time_factor_count", source="live") == decodes
    assert value(after, "livescribe_decode_step_seconds_bucket", le="+Inf") == decodes

    # Every final is observed once; streamed at 4x real time, a final follows its audio within seconds.
    assert finals and value(after, "livescribe_final_latency_seconds_count") == len(finals)
    latency_sum = value(after, "livescribe_final_latency_seconds_sum")
    assert 0 < latency_sum / len(finals) < 10

    # Errors by code: a bad upload counts; no session error happened.
    bad = app.test_client().post("/api/transcribe", data={"file": (io.BytesIO(b"not audio"), "x.wav")})
    assert bad.status_code == 400
    good = write_wav(tmp_path / "clip.wav", en00.clip(5.0).pcm).read_bytes()
    ok = app.test_client().post("/api/transcribe", data={"file": (io.BytesIO(good), "clip.wav")})
    assert ok.status_code == 200
    files = scrape(app)
    assert value(files, "livescribe_errors_total", code="invalid_audio") == 1
    assert sum(v for (name, _), v in files.items() if name == "livescribe_errors_total") == 1
    assert value(files, "livescribe_file_jobs_total", outcome="ok") == 1
    assert value(files, "livescribe_file_jobs_total", outcome="error") == 1
    assert value(files, "livescribe_file_audio_seconds_total") == pytest.approx(5.0, abs=0.01)
    assert value(files, "livescribe_real_time_factor_count", source="file") == 1
    assert value(files, "livescribe_file_jobs_queued") == 0
    assert value(files, "livescribe_cloud_failovers_total") == 0
    assert value(files, "livescribe_client_pauses_total", backend="local") == 0  # stop came at once


def test_a_client_pause_is_counted(app, socketio, en00: Fixture):
    clip = en00.clip(9.95)  # ends mid-speech: only the pause (or stop) can finalise it
    client = TestClientRecorder(socketio.test_client(app))
    client.client.emit("start", {"language": "en"})
    client.wait_for("ready")
    client.stream(clip.pcm, speed=4.0)
    wait_for_words_ending_after(client, 9.0)
    assert value(scrape(app), "livescribe_client_pauses_total", backend="local") == 1
    time.sleep(1.5)  # still quiet: nothing new was heard, so no second pause
    assert value(scrape(app), "livescribe_client_pauses_total", backend="local") == 1
    client.client.emit("stop")
    client.wait_for("stopped", timeout=30)


def test_each_app_has_its_own_registry(app, local_backend):
    local_backend.decode(np.zeros(16000, dtype=np.float32), DecodeOptions(language="en"))
    other = create_app(Config(async_mode="threading"), backends={"local": local_backend})
    assert value(scrape(app), "livescribe_decode_step_seconds_count") == 1
    assert value(scrape(other), "livescribe_decode_step_seconds_count") == 0
    local_backend.decode(np.zeros(16000, dtype=np.float32), DecodeOptions(language="en"))
    assert value(scrape(app), "livescribe_decode_step_seconds_count") == 2
    assert value(scrape(other), "livescribe_decode_step_seconds_count") == 1


def test_decode_observers(local_backend):
    seen: list[tuple[float, float]] = []
    local_backend.observers.append(lambda audio, elapsed: seen.append((audio, elapsed)))
    try:
        local_backend.decode(np.zeros(32000, dtype=np.float32), DecodeOptions(language="en"))
    finally:
        local_backend.observers.pop()
    assert len(seen) == 1 and seen[0][0] == pytest.approx(2.0) and seen[0][1] > 0


def test_observers_of_discarded_apps_are_dropped(local_backend):
    for _ in range(3):
        create_app(Config(async_mode="threading"), backends={"local": local_backend})
    gc.collect()
    create_app(Config(async_mode="threading"), backends={"local": local_backend})
    assert not any(getattr(o, "dead", False) for o in local_backend.observers)


def test_every_configured_backend_has_a_sessions_gauge_at_zero(local_backend):
    # A series that vanishes when its last session ends breaks graphs and "== 0" alerts.
    from backends.cloud import CloudBackend, CloudBackendOptions

    cloud = CloudBackend(CloudBackendOptions(api_key="key", url="ws://127.0.0.1:9/v2"))
    app = create_app(Config(async_mode="threading"), backends={"local": local_backend, "cloud": cloud})
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'livescribe_sessions_active{backend="cloud"} 0.0' in text
    assert 'livescribe_sessions_active{backend="local"} 0.0' in text
