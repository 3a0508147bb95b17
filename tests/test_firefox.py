"""The page's microphone capture path in a real Firefox (Debian's firefox-esr), without a driver.

Playwright's Firefox build cannot be installed here and Debian ships no geckodriver, so Firefox
runs headless on its own with a throw-away profile whose ``user.js`` turns on the fake
microphone (a steady sine tone) and lets the page start audio without a click. The page is
opened with its test hook ``?autostart=1&autostop=S`` (docs/CLIENT.md): it presses Start once
``server_info`` arrives and Stop S seconds after ``ready``.

The server is a small recording Socket.IO server in this process that serves the real
``static/`` page and speaks the protocol's session events (``server_info``, ``ready``,
``stopped``), so every ``audio`` payload can be checked byte for byte: 100 ms chunks of 16 kHz
Int16 (3200 bytes), as much audio as the page captured, and the fake microphone's tone at its
true frequency after the worklet's resampling from Firefox's native rate (a wrong rate shifts
the tone; a dropped or repeated chunk breaks its phase). The transcription side is covered by
tests/test_browser.py (Chromium) and the protocol tests; the tone is not speech.

Without firefox-esr (scripts/install_browser.sh) the test skips loudly, or fails under
LIVESCRIBE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.browser_helpers import REPO, _unavailable

pytestmark = pytest.mark.browser

FIREFOX = os.environ.get("LIVESCRIBE_FIREFOX", "/usr/bin/firefox-esr")
AUTOSTOP_S = 4.0
CHUNK_BYTES = 3200  # 100 ms of 16 kHz mono Int16
# Firefox's fake microphone plays a sine at this frequency (set explicitly in user.js).
TONE_HZ = 997

# A quiet, offline, prompt-free profile: fake media devices granted without a prompt, audio
# allowed to start without a user gesture (the hook presses Start from script), a mock audio
# output device, console
# messages of the page copied to stdout, and no first-run pages, telemetry or updates.
USER_JS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.audio.fake_frequency": TONE_HZ,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # No sound server here (no PulseAudio): with no output stream Firefox leaves every
    # AudioContext "suspended" forever. Its mock audio backend is a clocked stand-in device.
    "media.cubeb.force_mock_context": True,
    "devtools.console.stdout.content": True,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "browser.sessionstore.resume_from_crash": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reporting.enabled": False,
    "toolkit.telemetry.enabled": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "browser.search.update": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "browser.newtabpage.enabled": False,
    "browser.ping-centre.telemetry": False,
}


def user_js() -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "".join(f'user_pref("{k}", {value(v)});\n' for k, v in USER_JS.items())


# --- a recording protocol server --------------------------------------------------------------


@dataclass
class Recording:
    """What the page did, in arrival order (monotonic times)."""

    requests: int = 0
    user_agents: list[str] = field(default_factory=list)
    starts: list[dict] = field(default_factory=list)
    ready_at: float | None = None
    audio: list[tuple[float, bytes]] = field(default_factory=list)
    stop_at: float | None = None
    audio_after_stop: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


SERVER_INFO = {
    "protocol": 1,
    "version": "test",
    "backends": {
        "local": {
            "name": "local",
            "available": True,
            "reason": None,
            "model": "tiny.en",
            "device": "cpu",
            "device_name": "CPU (recording test server)",
            "compute_type": "int8",
            "multilingual": False,
            "languages": ["en"],
            "tasks": ["transcribe"],
        },
        "cloud": {"name": "cloud", "available": False, "reason": "not offered by the recording test server"},
    },
    "default_backend": "local",
    "default_language": "en",
    "limits": {
        "max_payload_bytes": 1048576,
        "min_sample_rate": 8000,
        "max_sample_rate": 192000,
        "encodings": ["pcm_s16le", "pcm_f32le"],
    },
}


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, Recording]]:
    """Serve static/ like the real server (``/`` and ``/static/...``) plus a Socket.IO endpoint
    that answers ``start``/``stop`` and records every ``audio`` payload."""
    import socketio
    from werkzeug.serving import make_server

    rec = Recording()
    sio = socketio.Server(async_mode="threading", max_http_buffer_size=1 << 20)

    @sio.event
    def connect(sid, environ, auth=None):
        with rec.lock:
            rec.user_agents.append(environ.get("HTTP_USER_AGENT", ""))
        sio.emit("server_info", SERVER_INFO, to=sid)

    @sio.on("start")
    def start(sid, data=None):
        with rec.lock:
            rec.starts.append(dict(data or {}))
            rec.ready_at = time.monotonic()
        sio.emit(
            "ready",
            {
                "session_id": "s1",
                "room": "r1",
                "backend": "local",
                "model": "tiny.en",
                "device": "cpu",
                "device_name": "CPU (recording test server)",
                "compute_type": "int8",
                "language": "en",
                "task": "transcribe",
                "sample_rate": 16000,
                "encoding": "pcm_s16le",
            },
            to=sid,
        )

    @sio.on("audio")
    def audio(sid, data=None):
        with rec.lock:
            if rec.stop_at is None:
                rec.audio.append((time.monotonic(), bytes(data)))
            else:
                rec.audio_after_stop += 1

    @sio.on("stop")
    def stop(sid, *_):
        with rec.lock:
            rec.stop_at = time.monotonic()
            seconds = sum(len(b) for _, b in rec.audio) / 32000
        sio.emit("stopped", {"session_id": "s1", "duration": seconds, "transcript": "", "analysis": {}}, to=sid)

    @sio.on("ping")
    def ping(sid, *_):
        return {"server_time": time.time()}

    static = REPO / "static"
    app = socketio.WSGIApp(sio, static_files={"/": str(static / "index.html"), "/static": str(static)})

    def counting(environ, start_response):
        with rec.lock:
            rec.requests += 1
        return app(environ, start_response)

    httpd = make_server("127.0.0.1", 0, counting, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", rec
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- Firefox ------------------------------------------------------------------------------------


@contextlib.contextmanager
def firefox(url: str, profile: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """Headless firefox-esr on ``url`` with a fresh profile; the whole process group is killed
    afterwards (Firefox forks content processes)."""
    if not (Path(FIREFOX).is_file() and os.access(FIREFOX, os.X_OK)):
        _unavailable(f"{FIREFOX} not found (Firefox tests)")
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(user_js())
    env = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1", "HOME": str(profile)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(profile), url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stray content processes


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """The strongest frequency in ``x`` (Hann window, parabolic peak interpolation)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * rate / len(x)


def tone_snr_db(x: np.ndarray, freq: float, rate: int) -> float:
    """Power of the best-fitting sinusoid at ``freq`` over the power of what is left, in dB."""
    t = np.arange(len(x)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    fitted = basis @ coef
    residual = x - fitted
    return float(10 * np.log10(np.mean(fitted**2) / max(np.mean(residual**2), 1e-20)))


@pytest.mark.timeout(90)
def test_firefox_captures_16k_chunks_through_the_worklet(tmp_path):
    log_path = tmp_path / "firefox.log"
    with (
        recording_server() as (url, rec),
        firefox(f"{url}/?autostart=1&autostop={AUTOSTOP_S:g}", tmp_path / "profile", log_path) as process,
    ):
        # Firefox starting at all: the page's first request reaches us.
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and rec.requests == 0 and process.poll() is None:
            time.sleep(0.2)
        if rec.requests == 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            _unavailable(f"{FIREFOX} did not start headless or never loaded the page (exit {process.poll()}):\n{tail}")
        # The hook: Start after server_info, Stop AUTOSTOP_S after ready.
        deadline = time.monotonic() + AUTOSTOP_S + 30
        while time.monotonic() < deadline and rec.stop_at is None:
            time.sleep(0.2)
        time.sleep(0.5)  # anything sent after `stop` would show up now
        # The page logs what it sent once `stopped` came back.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "audio clock" not in log_path.read_text(errors="replace"):
            time.sleep(0.1)
        log = log_path.read_text(errors="replace")
        assert rec.stop_at is not None, f"the page never stopped a session; starts={rec.starts}\n{log[-3000:]}"

    print(log[-1500:])
    # A session from Firefox, asking for what the worklet produces.
    assert rec.user_agents and all("Firefox/" in ua for ua in rec.user_agents), rec.user_agents
    assert len(rec.starts) == 1, rec.starts
    assert rec.starts[0]["sample_rate"] == 16000 and rec.starts[0]["encoding"] == "pcm_s16le", rec.starts[0]
    # The AudioContext ran at Firefox's native rate, not 16 kHz: the worklet did the resampling.
    match = re.search(r"livescribe autostart: capturing at (\d+) Hz", log)
    assert match, f"no capture-rate line on Firefox's console:\n{log[-3000:]}"
    context_rate = int(match.group(1))
    assert context_rate >= 22050, context_rate
    assert not re.search(r"^(JavaScript error|console\.error)", log, re.M), log[-3000:]

    # 100 ms Int16 chunks; only the flushed last one may be shorter; nothing after `stop`.
    sizes = [len(b) for _, b in rec.audio]
    assert sizes, "no audio reached the server"
    assert all(s == CHUNK_BYTES for s in sizes[:-1]), sorted(set(sizes[:-1]))
    assert 0 < sizes[-1] <= CHUNK_BYTES and sizes[-1] % 2 == 0, sizes[-1]
    assert rec.audio_after_stop == 0

    # Every sample the page sent arrived, and the page sent what its audio clock ran: the
    # capture is real time by the browser's own clock. Against the wall clock the bound is
    # loose: a CPU-starved Firefox runs its fake microphone and audio clock slow (2.64 s and
    # 1.75 s of audio for a 4 s autostop were seen while other tests ran).
    seconds = sum(sizes) / 32000
    wall = rec.stop_at - rec.ready_at
    match = re.search(r"livescribe autostart: sent ([\d.]+) s of audio; audio clock ([\d.]+) s", log)
    assert match, f"no sent/clock line on Firefox's console:\n{log[-3000:]}"
    sent, clock = float(match.group(1)), float(match.group(2))
    print(
        f"context {context_rate} Hz; {len(sizes)} chunks, {seconds:.3f} s of audio received, {sent:.3f} s sent;"
        f" audio clock {clock:.3f} s; ready->stop {wall:.2f} s"
    )
    assert abs(seconds - sent) < 0.001, (seconds, sent)
    assert abs(seconds - clock) <= 0.05 * clock + 0.15, (seconds, clock)
    assert 0.25 * AUTOSTOP_S <= seconds <= 1.5 * wall + 0.5, (seconds, AUTOSTOP_S, wall)

    # The fake microphone's tone, at its true frequency: the worklet resampled from the rate
    # the context really ran at (a wrong ratio moves it, e.g. 44.1 vs 48 kHz by 8.8%), and the
    # chunks join without gaps or repeats: one sinusoid at exactly TONE_HZ fits the whole
    # recording. (TONE_HZ is no multiple of 10 Hz, so a lost 100 ms chunk shifts its phase.)
    pcm = np.frombuffer(b"".join(b for _, b in rec.audio), dtype="<i2").astype(np.float64) / 32768
    assert np.max(np.abs(pcm)) > 0.01, "the captured audio is silent"
    body = pcm[3200 : len(pcm) - CHUNK_BYTES // 2]  # skip the start-up ramp and the flushed tail
    freq = dominant_frequency(body, 16000)
    snr = tone_snr_db(body, TONE_HZ, 16000)
    print(f"tone {freq:.3f} Hz, peak {np.max(np.abs(body)):.3f}, SNR of one {TONE_HZ} Hz sinusoid {snr:.1f} dB")
    assert abs(freq - TONE_HZ) < 1, freq
    assert snr > 40, f"the tone does not run on unbroken (SNR {snr:.1f} dB)"
