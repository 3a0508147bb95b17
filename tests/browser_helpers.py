"""Helpers for the real-browser tests: Debian Chromium through Playwright, a live server process.

Chromium comes from Debian (``scripts/install_browser.sh``), never from ``playwright install``.
When it is missing the tests skip with a loud reason; with ``LIVESCRIBE_REQUIRE_BROWSER=1``
(set by CI after installing it) they fail instead, so a broken install cannot pass silently.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.server_process import running_server

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LIVESCRIBE_CHROMIUM", "/usr/bin/chromium")

# Quiet, deterministic Chromium: no GPU, no background traffic, no first-run UI.
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _unavailable(reason: str) -> None:
    message = f"REAL-BROWSER TESTS NOT RUN: {reason}. Install with scripts/install_browser.sh."
    if os.environ.get("LIVESCRIBE_REQUIRE_BROWSER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def sync_playwright():
    """Playwright's sync entry point, or a loud skip when the package is missing."""
    try:
        from playwright.sync_api import sync_playwright as entry
    except ImportError:
        _unavailable("the 'playwright' Python package is not installed (requirements-dev.txt)")
    return entry()


def launch_chromium(playwright, *, fake_audio: Path | None = None, fake_device: bool = True, fake_ui: bool = True):
    """Launch Debian's Chromium headless.

    ``fake_device``: a fake microphone (playing ``fake_audio``, a WAV it loops, if given);
    ``fake_ui``: grant getUserMedia without a prompt (without it the request is refused).
    """
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"{CHROMIUM} not found")
    args = list(BASE_ARGS)
    if fake_device:
        args.append("--use-fake-device-for-media-stream")
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}")
    from playwright.sync_api import Error as PlaywrightError

    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
    except PlaywrightError as exc:
        _unavailable(f"{CHROMIUM} could not be launched: {str(exc).splitlines()[0]}")


@contextlib.contextmanager
def live_server(log_path: Path, *extra_args: str, timeout: float = 120.0) -> Iterator[str]:
    """Run ``python -m server`` on a free loopback port (no cloud key); yields its base URL."""
    with running_server(*extra_args, log_path=log_path, timeout=timeout) as server:
        yield server.url


class CuttableProxy:
    """A loopback TCP forwarder to ``target_port`` whose open connections the test can cut at
    once, as a failing network does (neither end says goodbye); new connections go through
    unless ``paused``."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> int:
        """Reset every open connection; returns how many there were."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close sends a reset, as a dead route eventually does.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        return len(sockets) // 2

    def close(self) -> None:
        self._listener.close()
        self.cut()

    paused = False  # True: new connections are refused too (the network is down)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.paused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def static_server() -> Iterator[str]:
    """Serve the repository root over HTTP (module scripts and worklets need http://)."""
    handler = functools.partial(_QuietHandler, directory=str(REPO))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
    }

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


# A scripted stand-in for the Socket.IO client, served in place of the vendored one so page
# tests can play the server's side exactly: `__fake.fire(event, payload)` delivers an event,
# `__fake.emitted` records what the page sent (binary payloads as {bytes: n}).
FAKE_SOCKET_IO_JS = """
window.__fake = {emitted: [], fire: null, options: null};
window.io = function (options) {
  const handlers = {};
  const fire = (event, ...args) => { for (const fn of handlers[event] || []) fn(...args); };
  const socket = {
    connected: false,
    active: true,
    io: { on() {} },
    on(event, fn) { (handlers[event] = handlers[event] || []).push(fn); return socket; },
    timeout() { return socket; },
    connect() {},
    disconnect() { socket.connected = false; fire('disconnect', 'io client disconnect'); },
    emit(event, ...args) {
      const ack = args.find((a) => typeof a === 'function');
      const data = args.filter((a) => typeof a !== 'function').map(
        (a) => (a instanceof ArrayBuffer || ArrayBuffer.isView(a) ? {bytes: a.byteLength} : a));
      window.__fake.emitted.push([event, ...data]);
      if (event === 'ping' && ack) ack(null, {server_time: Date.now() / 1000});
      return socket;
    },
  };
  window.__fake.options = options;
  window.__fake.fire = (event, payload) => {
    if (event === 'connect') socket.connected = true;
    if (event === 'disconnect') socket.connected = false;
    fire(event, payload);
  };
  return socket;
};
"""
