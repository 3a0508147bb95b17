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
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering HTTP:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s ({last}):\n{tail}")


@contextlib.contextmanager
def live_server(log_path: Path, *extra_args: str, timeout: float = 120.0) -> Iterator[str]:
    """Run ``python -m server`` on a free loopback port; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    env = dict(os.environ)
    env.pop("SPEECHMATICS_API_KEY", None)  # the cloud backend must report itself unavailable
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/", proc, timeout, log_path)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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
