"""Real ``python -m server`` processes on loopback, and a recording Socket.IO client for them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import socketio

from tests.streaming import paced_chunks

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerProcess:
    url: str
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_ready(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(server.url + "/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server did not become ready in {timeout:.0f} s:\n{server.log()[-4000:]}")


@contextlib.contextmanager
def running_server(
    *args: str, env: Mapping[str, str] | None = None, log_path: Path | None = None, timeout: float = 120.0
) -> Iterator[ServerProcess]:
    """``python -m server --port <free> *args`` until the block ends; then SIGTERM, which must
    stop it cleanly (exit code 0). The cloud key of the calling environment is not inherited."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SPEECHMATICS_")}
    environment.update(PYTHONUNBUFFERED="1", **(env or {}))
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="livescribe-test-")) / "server.log"
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", log_path, process)
    failed = False
    try:
        _wait_ready(server, timeout)
        yield server
    except BaseException:
        failed = True
        raise
    finally:
        process.terminate()
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            returncode = None
        if not failed:
            assert returncode == 0, (
                f"SIGTERM should stop the server cleanly (exit {returncode}):\n{server.log()[-4000:]}"
            )


class Client:
    """A python-socketio client (WebSocket) that records every event with its arrival time."""

    EVENTS = (
        "server_info",
        "ready",
        "resumed",
        "partial",
        "final",
        "language",
        "error",
        "stopped",
        "joined",
        "backend_changed",
    )

    def __init__(self, url: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[float, str, object]] = []
        self._lock = threading.Lock()
        for name in self.EVENTS:
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
        """Send 100 ms audio messages paced at ``speed`` x real time."""
        for piece in paced_chunks(pcm, speed):
            self.sio.emit("audio", piece)
