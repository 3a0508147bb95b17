"""A real server process on loopback (gevent, WebSocket) driven by python-socketio clients."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import socketio

from bench.wer import wer
from tests.conftest import Fixture
from tests.streaming import CHUNK_BYTES, assert_finals_well_formed, finals_text

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def run_server(*args: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("the server did not stop within 30 s of SIGTERM") from None
        assert returncode == 0, f"SIGTERM should stop the server cleanly, exit code {returncode}"


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    yield from run_server()


class Client:
    """A python-socketio client that records every event with its arrival time."""

    def __init__(self, url: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[float, str, object]] = []
        self._lock = threading.Lock()
        for name in ("server_info", "ready", "partial", "final", "language", "error", "stopped", "joined"):
            self.sio.on(name, self._recorder(name))
        self.sio.connect(url, transports=["websocket"])

    def _recorder(self, name: str):
        def record(data=None):
            with self._lock:
                self.events.append((time.monotonic(), name, data))

        return record

    def named(self, name: str) -> list:
        with self._lock:
            return [d for _, n, d in self.events if n == name]

    def wait_for(self, name: str, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.named(name)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {name} within {timeout} s: {[n for _, n, _ in self.events]}")

    def stream(self, pcm: bytes, speed: float) -> None:
        started = time.monotonic()
        for offset in range(0, len(pcm), CHUNK_BYTES):
            self.sio.emit("audio", pcm[offset : offset + CHUNK_BYTES])
            due = started + (offset + CHUNK_BYTES) / 32000 / speed
            time.sleep(max(0.0, due - time.monotonic()))


@pytest.mark.slow
def test_two_sessions_a_watcher_and_a_responsive_loop(server_url: str, en00: Fixture, en01: Fixture):
    speaker_a, speaker_b, watcher, pinger = (Client(server_url) for _ in range(4))
    try:
        speaker_a.sio.emit("start", {"language": "en", "room": "room-a"})
        speaker_b.sio.emit("start", {})
        ready_a = speaker_a.wait_for("ready")[0]
        ready_b = speaker_b.wait_for("ready")[0]
        assert ready_a["room"] == "room-a" and ready_b["language"] == "en"
        watcher.sio.emit("join", {"room": "room-a"})
        watcher.wait_for("joined")

        # Both speakers stream at once (paced 2x real time); meanwhile the event loop must
        # keep answering: a ping round trip every 200 ms.
        round_trips: list[float] = []
        done = threading.Event()

        def ping() -> None:
            while not done.is_set():
                sent = time.monotonic()
                pinger.sio.call("ping", {}, timeout=10)
                round_trips.append(time.monotonic() - sent)
                time.sleep(0.2)

        threads = [
            threading.Thread(target=speaker_a.stream, args=(en00.pcm, 2.0)),
            threading.Thread(target=speaker_b.stream, args=(en01.pcm, 2.0)),
            threading.Thread(target=ping),
        ]
        for t in threads:
            t.start()
        threads[0].join()
        threads[1].join()
        done.set()
        threads[2].join()
        speaker_a.sio.emit("stop")
        speaker_b.sio.emit("stop")
        stopped_a = speaker_a.wait_for("stopped", timeout=90)[0]
        speaker_b.wait_for("stopped", timeout=90)[0]
        watcher.wait_for("stopped", timeout=10)

        finals_a, finals_b = speaker_a.named("final"), speaker_b.named("final")
        assert_finals_well_formed(finals_a)
        assert_finals_well_formed(finals_b)
        assert wer(en00.text, finals_text(finals_a)) < 0.15
        assert wer(en01.text, finals_text(finals_b)) < 0.15
        assert stopped_a["transcript"] == finals_text(finals_a)
        assert watcher.named("final") == finals_a
        assert all(f["session_id"] == ready_a["session_id"] for f in watcher.named("final"))
        assert speaker_a.named("error") == [] and speaker_b.named("error") == []

        assert len(round_trips) > 50
        median = statistics.median(round_trips)
        assert median < 0.1, f"ping median {median * 1000:.0f} ms while two sessions decode"
    finally:
        for client in (speaker_a, speaker_b, watcher, pinger):
            client.sio.disconnect()


def test_static_page_and_health(server_url: str):
    with urllib.request.urlopen(server_url + "/health", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(server_url + "/", timeout=5) as response:
        assert response.status == 200
        assert b"<html" in response.read().lower()


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_other_async_modes_transcribe(mode: str, en00: Fixture):
    if mode == "eventlet":
        pytest.importorskip("eventlet", reason="eventlet is optional: pip install eventlet")
    clip = en00.clip(10.0)
    for url in run_server("--async-mode", mode):
        client = Client(url)
        try:
            client.sio.emit("start", {"language": "en"})
            client.wait_for("ready")
            client.stream(clip.pcm, speed=4.0)
            client.sio.emit("stop")
            stopped = client.wait_for("stopped", timeout=60)[0]
        finally:
            client.sio.disconnect()
        reference = " ".join(u["text"] for u in clip.reference["utterances"])
        assert wer(reference, stopped["transcript"]) < 0.2
