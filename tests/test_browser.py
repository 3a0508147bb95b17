"""The browser client (static/) in a real Chromium, driven by Playwright.

Two groups:

* The page's audio and export code on its own (static files over HTTP): the worklet's
  resampler and Int16 conversion, the transcript's .srt/.vtt/.txt exports.
* End to end against a real ``python -m server`` process: Chromium's fake microphone plays a
  corpus WAV, the page captures it through its AudioWorklet and streams it; the finals on the
  page must match the reference (normalised WER), a grey partial must come first, the status
  must name device and backend, the .srt download must parse, and a second page watching the
  room must receive the same finals.

Chromium is Debian's (/usr/bin/chromium, scripts/install_browser.sh); without it these tests
skip loudly (or fail under LIVESCRIBE_REQUIRE_BROWSER=1).
"""

from __future__ import annotations

import html
import io
import itertools
import re
import wave
from pathlib import Path

import pytest

from tests.browser_helpers import (
    FAKE_SOCKET_IO_JS,
    REPO,
    CuttableProxy,
    launch_chromium,
    live_server,
    static_server,
    sync_playwright,
)
from tests.streaming import finals_text

srt = pytest.importorskip("srt", reason="the 'srt' package (requirements-dev.txt) parses the .srt download")

pytestmark = pytest.mark.browser

# WER bound for the live browser path. tiny.en through the streaming pipeline scores well under
# 0.15 on this clean prompt-style English stream when fed directly; the browser path adds two
# resamplings (16 kHz file -> Chromium's context rate -> 16 kHz in the worklet, ~70 dB SNR)
# and 100 ms chunking in real time, which should cost next to nothing. 0.25 leaves room for
# commit-timing differences on a loaded 2-core machine while still failing on real breakage:
# a broken resampler (aliasing, wrong rate) or dropped/duplicated chunks push WER far above it.
WER_BOUND = 0.25


# --- the page's own code, no server ---------------------------------------------------------


@pytest.fixture(scope="module")
def pw():
    """One Playwright driver for the module (its sync API cannot nest)."""
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def launch(pw):
    """Launch Chromium for one test (closed afterwards, pass or fail)."""
    browsers = []

    def _launch(**kwargs):
        browser = launch_chromium(pw, **kwargs)
        browsers.append(browser)
        return browser

    yield _launch
    for browser in browsers:
        browser.close()


@pytest.fixture(scope="module")
def static_url():
    with static_server() as base:
        yield base


@pytest.fixture(scope="module")
def module_page(pw, static_url):
    """A blank page on a static server of the repo, with the client modules importable."""
    browser = launch_chromium(pw, fake_device=False, fake_ui=False)
    page = browser.new_page()
    page.goto(f"{static_url}/static/")  # a directory listing: any same-origin document will do
    yield page
    browser.close()


RESAMPLE_JS = """
async ({inRate, freqs, seconds, blocks}) => {
  const { Resampler } = await import('/static/worklet/pcm-worklet.js');
  const n = Math.round(inRate * seconds);
  const x = new Float32Array(n);
  for (const [f, a] of freqs) for (let i = 0; i < n; i++) x[i] += a * Math.sin(2 * Math.PI * f * i / inRate);
  const run = (sizes) => {
    const r = new Resampler(inRate, 16000);
    const parts = [];
    let pos = 0, k = 0;
    while (pos < n) {
      const size = sizes[k++ % sizes.length];
      parts.push(r.process(x.subarray(pos, Math.min(n, pos + size))));
      pos += size;
    }
    parts.push(r.flush());
    const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  };
  const outs = blocks.map(run);
  return outs.map((o) => Array.from(o));
}
"""


def tone_fit(y, freq: float, rate: int = 16000) -> tuple[float, float]:
    """Amplitude of a sinusoid at ``freq`` in ``y`` (least squares) and the residual's RMS."""
    import numpy as np

    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    residual = y - basis @ coef
    return float(np.hypot(*coef)), float(np.sqrt(np.mean(residual**2)))


@pytest.mark.parametrize("in_rate", [44100, 48000, 96000, 22050])
def test_worklet_resampler_keeps_speech_band_and_rejects_aliases(module_page, in_rate):
    import numpy as np

    seconds = 1.0
    # A 1 kHz tone (kept) plus, where the input rate allows, a 12 kHz tone that a naive
    # decimator would fold down to 4 kHz (must be removed by the low-pass).
    freqs = [[1000, 0.5]] + ([[12000, 0.3]] if in_rate > 24000 else [])
    out = module_page.evaluate(RESAMPLE_JS, {"inRate": in_rate, "freqs": freqs, "seconds": seconds, "blocks": [[128]]})[
        0
    ]
    y = np.asarray(out)
    assert abs(len(y) - 16000 * seconds) <= 2, "output length must follow the rate ratio"
    core = y[400:-400]  # leave out the filter's edges (zero history before, flush after)
    amp, residual = tone_fit(core, 1000)
    assert amp == pytest.approx(0.5, rel=0.01), "1 kHz must pass at unity gain"
    # Everything that is not the 1 kHz tone (aliases of 12 kHz at 4 kHz, resampling error).
    print(f"{in_rate} Hz: residual {20 * np.log10(residual / amp):.1f} dB")
    assert 20 * np.log10(residual / amp) < -80, f"residual {20 * np.log10(residual / amp):.1f} dB"
    # Zero phase: output sample n is input time n/16000, no delay to account for.
    t = np.arange(len(y)) / 16000
    assert np.max(np.abs(y[400:-400] - 0.5 * np.sin(2 * np.pi * 1000 * t[400:-400]))) < 0.01


def test_worklet_resampler_is_seamless_across_block_sizes(module_page):
    import numpy as np

    # Render quanta are 128 frames, but the state must carry across any split.
    outs = module_page.evaluate(
        RESAMPLE_JS,
        {
            "inRate": 44100,
            "freqs": [[440, 0.4], [3100, 0.2]],
            "seconds": 0.5,
            "blocks": [[22050], [128], [1, 127, 300, 7]],
        },
    )
    whole, *split = (np.asarray(o) for o in outs)
    for other in split:
        assert len(other) == len(whole)
        assert np.max(np.abs(other - whole)) < 1e-6


def test_worklet_int16_conversion_clamps_and_scales(module_page):
    values = module_page.evaluate(
        """async () => {
          const { floatToInt16LE } = await import('/static/worklet/pcm-worklet.js');
          const buf = floatToInt16LE(Float32Array.from([0, 1, -1, 0.5, -0.5, 2, -3, 1e-6]));
          return Array.from(new Int16Array(buf));  // the test machine is little-endian
        }"""
    )
    assert values == [0, 32767, -32768, 16384, -16384, 32767, -32768, 0]


def test_transcript_exports_are_well_formed(module_page):
    exports = module_page.evaluate(
        """async () => {
          const { Transcript } = await import('/static/lib/transcript.js');
          const t = new Transcript();
          const fin = (session_id, segment_id, text, start, end) =>
            t.addFinal({session_id, segment_id, text, start, end});
          t.setPartial({session_id: 'a', text: 'hello wor', start: 0.5, end: 1.2});
          const grouped = [fin('a', 0, ' Hello', 0.5, 0.9), fin('a', 1, 'world.', 0.9, 1.25)].map((r) => r.newLine);
          fin('a', 2, 'Second --> line\\nwrapped', 3600.0, 3601.5);  // new line: the last one ended a sentence
          fin('a', 3, '', 3601.5, 3601.5);                            // empty finals join no line
          fin('a', 4, 'and more', 3601.6, 3602.0);                    // continues the sentence
          fin('a', 5, 'after a pause', 3604.0, 3604.5);               // new line: 2 s pause
          t.endSession('a', 3605.0);
          // A second session on the same page continues the timeline after the first.
          fin('b', 0, 'Again.', 1.0, 2.0);
          fin('b', 1, 'a'.repeat(50), 2.0, 3.0);
          fin('b', 2, 'b'.repeat(40), 3.0, 4.0);                      // new line: 91 characters
          return {grouped, srt: t.toSRT(), vtt: t.toVTT(), txt: t.toText(), plain: t.toPlainText(), partial: t.partial};
        }"""
    )
    assert exports["grouped"] == [True, False]
    cues = list(srt.parse(exports["srt"]))
    assert [c.index for c in cues] == [1, 2, 3, 4, 5, 6]
    assert [c.content for c in cues] == [
        "Hello world.",
        "Second -> line wrapped and more",
        "after a pause",
        "Again.",
        "a" * 50,
        "b" * 40,
    ]
    times = [(c.start.total_seconds(), c.end.total_seconds()) for c in cues]
    # A line shorter than 0.8 s stays up that long (MIN_CUE_SECONDS), never into the next one.
    assert times[0] == pytest.approx((0.5, 1.3))
    assert times[1] == pytest.approx((3600.0, 3602.0))
    assert times[2] == pytest.approx((3604.0, 3604.8))
    assert times[3] == pytest.approx((3606.0, 3607.0))  # 3605 s of session a, then 1.0 s into b
    assert exports["srt"].startswith(
        "1\n00:00:00,500 --> 00:00:01,300\nHello world.\n\n2\n01:00:00,000 --> 01:00:02,000\n"
    )
    assert "\n\n\n" not in exports["srt"]

    vtt = exports["vtt"]
    assert vtt.startswith("WEBVTT\n\n")
    blocks = vtt.strip().split("\n\n")
    assert blocks[0] == "WEBVTT"
    assert blocks[1] == "00:00:00.500 --> 00:00:01.300\nHello world."
    assert len(blocks) == 7
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n[^\n]+", b) for b in blocks[1:])
    webvtt = pytest.importorskip("webvtt", reason="webvtt-py (requirements-dev.txt) parses the .vtt export")
    captions = webvtt.from_buffer(io.StringIO(vtt))
    assert [html.unescape(c.text) for c in captions] == [c.content for c in cues]  # "->" is "-&gt;"
    assert [(c.start, c.end) for c in captions][1] == ("01:00:00.000", "01:00:02.000")

    assert exports["txt"].splitlines()[:2] == [
        "[00:00:00.500] Hello world.",
        "[01:00:00.000] Second --> line wrapped and more",
    ]
    assert exports["plain"].splitlines()[:3] == ["Hello world.", "Second --> line wrapped and more", "after a pause"]
    assert exports["partial"] is None  # ending a session clears its partial


def test_vtt_export_escapes_what_webvtt_reads_as_markup(module_page):
    vtt = module_page.evaluate(
        """async () => {
          const { Transcript } = await import('/static/lib/transcript.js');
          const t = new Transcript();
          t.addFinal({session_id: 'a', segment_id: 0, text: 'R&D said <i>x</i> > y.', start: 0, end: 1});
          return t.toVTT();
        }"""
    )
    assert vtt.split("\n\n")[1].split("\n")[1] == "R&amp;D said &lt;i&gt;x&lt;/i&gt; &gt; y."
    webvtt = pytest.importorskip("webvtt", reason="webvtt-py (requirements-dev.txt) parses the .vtt export")
    (caption,) = webvtt.from_buffer(io.StringIO(vtt))
    assert "<i>" not in caption.text


def test_a_final_that_goes_on_with_a_word_joins_its_line_without_a_space(module_page):
    lines = module_page.evaluate(
        """async () => {
          const { Transcript, LINE_MAX_CHARS } = await import('/static/lib/transcript.js');
          const t = new Transcript();
          const rest = {joins_previous: true};
          t.addFinal({session_id: 'a', segment_id: 0, text: 'Using your touch', start: 0.5, end: 1.0});
          t.addFinal({...rest, session_id: 'a', segment_id: 1, text: 'tone keypad.', start: 1.0, end: 1.6});
          // Even past a line's limits: the rest of a word stays with it.
          t.addFinal({session_id: 'a', segment_id: 2, text: 'x'.repeat(LINE_MAX_CHARS), start: 1.7, end: 2.0});
          t.addFinal({...rest, session_id: 'a', segment_id: 3, text: 'y', start: 2.0, end: 2.1});
          return t.lines.map((l) => l.text);
        }"""
    )
    assert lines == ["Using your touchtone keypad.", "x" * 84 + "y"]


# --- the page against a scripted server (fake Socket.IO client) -----------------------------

LOCAL_TINY_EN = {
    "name": "local", "available": True, "reason": None, "model": "tiny.en", "device": "cpu",
    "device_name": "CPU (Test)", "compute_type": "int8", "multilingual": False, "languages": ["en"],
    "tasks": ["transcribe"],
}  # fmt: skip
LOCAL_MULTI = {
    **LOCAL_TINY_EN, "model": "base", "multilingual": True, "languages": ["en", "fr", "de"],
    "tasks": ["transcribe", "translate"],
}  # fmt: skip
CLOUD_OFF = {"name": "cloud", "available": False, "reason": "no SPEECHMATICS_API_KEY configured", "languages": []}
CLOUD_ON = {"name": "cloud", "available": True, "reason": None, "model": "enhanced", "device": "cloud",
            "device_name": "Speechmatics", "compute_type": None, "multilingual": True,
            "languages": ["en", "fr"], "tasks": ["transcribe"]}  # fmt: skip


def server_info(local: dict, cloud: dict) -> dict:
    return {
        "protocol": 1,
        "version": "0.1.0",
        "backends": {"local": local, "cloud": cloud},
        "default_backend": "local",
        "default_language": "auto",
        "limits": {"max_payload_bytes": 1 << 20},
    }


READY = {
    "session_id": "s1", "room": "s1", "backend": "local", "model": "base", "device": "cpu",
    "device_name": "CPU (Test)", "compute_type": "int8", "language": "fr", "task": "translate",
    "sample_rate": 16000, "encoding": "pcm_s16le",
}  # fmt: skip


@pytest.fixture
def fake_page(launch, static_url):
    """Open the page with the scripted Socket.IO; ``open(query)`` returns the page."""

    def _open(query: str = ""):
        browser = launch()
        page = browser.new_page()
        page.route(
            "**/static/vendor/socket.io.min.js",
            lambda route: route.fulfill(body=FAKE_SOCKET_IO_JS, content_type="text/javascript"),
        )
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{static_url}/static/index.html{query}")
        page.wait_for_function("window.__fake && window.__fake.fire && window.livescribe")
        page.page_errors = errors
        return page

    return _open


def fire(page, event: str, payload=None) -> None:
    page.evaluate("([e, p]) => window.__fake.fire(e, p)", [event, payload])


def emitted(page, event: str | None = None) -> list:
    sent = page.evaluate("window.__fake.emitted")
    return [e for e in sent if event is None or e[0] == event]


def options(page, select: str) -> list[str]:
    return page.eval_on_selector_all(f"{select} option", "els => els.map(e => e.value)")


def test_settings_follow_the_servers_backends(fake_page):
    page = fake_page()
    assert page.inner_text("#conn-state") == "Connecting…"
    assert page.is_disabled("#start-btn")
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_MULTI, CLOUD_ON))
    assert page.inner_text("#conn-state") == "Connected"

    # Multilingual local model: auto + its languages, both tasks; cloud selectable.
    assert options(page, "#language")[0] == "auto"
    assert sorted(options(page, "#language")[1:]) == ["de", "en", "fr"]
    assert "French (fr)" in page.inner_text("#language")
    assert options(page, "#task") == ["transcribe", "translate"]
    assert page.is_enabled("#task") and page.is_enabled("#backend-cloud")
    assert page.is_hidden("#backend-hint")
    # Cloud: its own languages, and no translate.
    page.click("label[for=backend-cloud]")
    assert sorted(options(page, "#language")) == ["auto", "en", "fr"]
    assert options(page, "#task") == ["transcribe"] and page.is_disabled("#task")

    # The server loses its cloud key (reconnect with new server_info): greyed out, with why.
    fire(page, "server_info", server_info(LOCAL_TINY_EN, CLOUD_OFF))
    assert page.is_disabled("#backend-cloud") and page.is_checked("#backend-local")
    assert "no SPEECHMATICS_API_KEY configured" in page.inner_text("#backend-hint")
    # English-only model: English only (no auto), said in words.
    assert options(page, "#language") == ["en"] and page.is_disabled("#language")
    assert "English-only" in page.inner_text("#language-hint")
    assert page.is_enabled("#start-btn")

    # Accessible: labelled controls, live captions region, keyboard focus is visible.
    assert page.get_by_label("Language").count() == 1 and page.get_by_label("Task").count() == 1
    assert page.get_attribute("#finals", "aria-live") == "polite"
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "start-btn":
            break
    else:
        pytest.fail("the Start button is not reachable with the keyboard")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    assert not page.page_errors


def test_own_session_sends_100ms_int16_chunks_and_locks_settings(fake_page):
    page = fake_page()
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_MULTI, CLOUD_ON))
    page.select_option("#language", "fr")
    page.select_option("#task", "translate")
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    assert emitted(page, "start")[0][1] == {
        "backend": "local", "language": "fr", "task": "translate", "sample_rate": 16000, "encoding": "pcm_s16le",
    }  # fmt: skip
    page.wait_for_timeout(400)  # audio captured before `ready` is held back, not sent or lost
    assert emitted(page, "audio") == []
    fire(page, "ready", READY)
    page.wait_for_function("window.__fake.emitted.filter(e => e[0] === 'audio').length >= 12")
    chunks = [e[1]["bytes"] for e in emitted(page, "audio")]
    assert all(n == 3200 for n in chunks), chunks  # 100 ms of 16 kHz Int16
    for control in ("#backend-local", "#backend-cloud", "#language", "#task"):
        assert page.is_disabled(control), f"{control} must be locked while the session runs"
    assert "CPU (Test) · int8" in page.inner_text("#status-device")
    assert page.inner_text("#status-model") == "base"

    # The partial is replaced in place, and an empty one clears it.
    sent = page.evaluate("window.livescribe.audioSecondsSent")
    fire(page, "partial", {"session_id": "s1", "text": "bonjour", "start": 0.0, "end": 0.4})
    fire(page, "partial", {"session_id": "s1", "text": "bonjour à tous", "start": 0.0, "end": min(sent, 0.9)})
    assert page.locator(".partial").count() == 1
    assert page.inner_text("#partial .partial-text") == "bonjour à tous"
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.inner_text("#status-latency"))
    fire(page, "final", {"session_id": "s1", "segment_id": 0, "text": "Bonjour à tous.", "start": 0.0, "end": 0.9})
    fire(page, "partial", {"session_id": "s1", "text": "", "start": 0.9, "end": 0.9})
    assert page.is_hidden("#partial")
    assert page.inner_text("#finals").endswith("Bonjour à tous.")
    assert page.inner_text("#finals time") == "0:00"
    assert page.input_value("#watch-link").endswith("/static/index.html?room=s1")
    # The rest of a word ("joins_previous") is shown against it, without a space.
    fire(page, "final", {"session_id": "s1", "segment_id": 1, "text": "Touch", "start": 0.9, "end": 1.2})
    final = {"session_id": "s1", "segment_id": 2, "text": "tone keypad", "start": 1.2, "end": 1.6}
    fire(page, "final", {**final, "joins_previous": True})
    assert page.inner_text("#finals").endswith("Touchtone keypad")
    assert finals_text(page_finals(page)) == "Bonjour à tous. Touchtone keypad"

    page.click("#stop-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'stop')")
    names = [e[0] for e in emitted(page) if e[0] in ("audio", "stop")]
    assert names.index("stop") == len(names) - 1, "the last audio goes out before stop"
    assert all(e[1]["bytes"] % 2 == 0 and 0 < e[1]["bytes"] <= 3200 for e in emitted(page, "audio"))
    fire(page, "stopped", {"session_id": "s1", "duration": 2.0, "transcript": "Bonjour à tous.", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert page.is_visible("#start-btn") and page.is_enabled("#language")
    assert page.evaluate("window.livescribe.contextSampleRate") is None
    assert not page.page_errors


def test_mute_stops_sending_and_the_session_goes_on(fake_page):
    page = fake_page()
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_TINY_EN, CLOUD_OFF))
    assert page.is_hidden("#mute-btn")
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    fire(page, "ready", {**READY, "model": "tiny.en", "language": "en", "task": "transcribe"})
    page.wait_for_function("window.__fake.emitted.filter(e => e[0] === 'audio').length >= 5")
    page.click("#mute-btn")
    assert page.inner_text("#mute-btn") == "Unmute" and page.evaluate("window.livescribe.muted")
    # server_info without idle_final (an older server): no promise of a time.
    assert "Muted" in page.inner_text("#session-state") and "when you unmute" in page.inner_text("#session-state")
    muted_at = len(emitted(page, "audio"))
    page.wait_for_timeout(600)
    assert len(emitted(page, "audio")) == muted_at, "audio went out while muted"
    page.click("#mute-btn")
    assert page.inner_text("#mute-btn") == "Mute" and not page.evaluate("window.livescribe.muted")
    page.wait_for_function(f"window.__fake.emitted.filter(e => e[0] === 'audio').length >= {muted_at + 5}")
    # Session time is the audio sent: the muted 0.6 s is not in it.
    sent = sum(e[1]["bytes"] for e in emitted(page, "audio")) / 32000
    assert page.evaluate("window.livescribe.audioSecondsSent") == pytest.approx(sent, abs=0.11)
    page.click("#stop-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'stop')")
    assert page.is_hidden("#mute-btn")
    assert not page.page_errors


def test_watch_view_joins_the_room_and_auto_scroll_pauses_while_reading_back(fake_page):
    page = fake_page("?room=abc123")
    assert page.is_hidden("#session-card") and page.is_hidden("#start-btn")
    assert page.inner_text("#watch-room") == "abc123"
    fire(page, "connect")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'join')")
    assert emitted(page, "join") == [["join", {"room": "abc123"}]]
    fire(page, "joined", {"room": "abc123", "sessions": ["s9"]})
    page.wait_for_function("document.getElementById('watch-state').textContent.startsWith('Live')")

    def say(k: int) -> None:
        fire(
            page,
            "final",
            {"session_id": "s9", "segment_id": k, "text": f"Sentence number {k}.", "start": k, "end": k + 0.8},
        )

    for k in range(60):
        say(k)
    at_bottom = """(() => {
        const t = document.getElementById('transcript');
        return t.scrollHeight - t.scrollTop - t.clientHeight < 2;
    })()"""
    assert page.evaluate(
        "document.getElementById('transcript').scrollHeight > 2 * document.getElementById('transcript').clientHeight"
    )
    assert page.evaluate(at_bottom), "follows the newest caption"

    # The reader scrolls back: new captions no longer yank the view; a button offers the way back.
    page.evaluate("document.getElementById('transcript').scrollTop = 0")
    page.wait_for_timeout(100)
    for k in range(60, 63):
        say(k)
    assert page.evaluate("document.getElementById('transcript').scrollTop") < 5
    assert page.is_visible("#jump-btn")
    page.click("#jump-btn")
    assert page.evaluate(at_bottom) and page.is_hidden("#jump-btn")
    say(63)
    assert page.evaluate(at_bottom), "following resumes at the bottom"
    assert page.locator("#finals .line").count() == 64

    fire(page, "stopped", {"session_id": "s9", "duration": 64.0, "transcript": "", "analysis": {}})
    assert "ended" in page.inner_text("#watch-state")
    assert not page.page_errors


def test_errors_connection_changes_and_failover_are_shown_in_words(fake_page):
    page = fake_page()
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_TINY_EN, CLOUD_ON))
    fire(page, "error", {"code": "server_busy", "message": "8 sessions are running", "fatal": True})
    alert = page.inner_text(".alert[data-code=server_busy]")
    assert "The server is busy with other sessions" in alert and "8 sessions are running" in alert
    fire(page, "error", {"code": "cloud_quota_exceeded", "message": "quota", "fatal": False})
    assert "cloud transcription service" in page.inner_text(".alert[data-code=cloud_quota_exceeded]")

    fire(page, "disconnect", "transport close")
    assert page.inner_text("#conn-state") == "Reconnecting…"
    assert page.get_attribute("#conn", "data-state") == "reconnecting"
    assert page.is_disabled("#start-btn")
    fire(page, "connect")
    assert page.inner_text("#conn-state") == "Connected"
    assert page.locator(".alert[data-key=connection]").count() == 0

    fire(
        page,
        "backend_changed",
        {"session_id": "s1", "from": "cloud", "to": "local", "reason": "cloud timeout", "at": 12.5},
    )
    assert page.inner_text("#status-backend") == "Local"
    assert "Switched from the Cloud engine to the Local engine at 0:12" in page.inner_text("#alerts")
    assert not page.page_errors


def test_a_session_ended_by_an_error_leaves_no_partial_and_the_next_starts_after_it(fake_page):
    page = fake_page()
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_TINY_EN, CLOUD_ON))
    page.click("label[for=backend-cloud]")
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    fire(page, "ready", {**READY, "backend": "cloud", "language": "en", "task": "transcribe"})
    fire(page, "final", {"session_id": "s1", "segment_id": 0, "text": "Hello there.", "start": 0.0, "end": 1.0})
    fire(page, "partial", {"session_id": "s1", "text": "please enter the", "start": 1.2, "end": 2.0})
    lost = "lost; audio from 1.00 s to 2.50 s was not transcribed"
    fire(page, "error", {"code": "cloud_connection_lost", "message": lost, "fatal": True, "session_id": "s1"})
    fire(page, "stopped", {"session_id": "s1", "duration": 2.5, "transcript": "Hello there.", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert not page.is_visible("#partial")  # the dead session's words-in-progress are gone
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.filter(e => e[0] === 'start').length === 2")
    fire(page, "ready", {**READY, "session_id": "s2", "room": "s2", "language": "en", "task": "transcribe"})
    assert page.evaluate("window.livescribe.transcript.offsetFor('s2')") == 2.5
    assert not page.page_errors


def start_resumable_session(page, audio_chunks: int = 5) -> None:
    """Start a session the server would keep after a drop; wait for its first audio chunks
    (0: until it runs, for pages on Playwright's clock)."""
    fire(page, "connect")
    fire(page, "server_info", {**server_info(LOCAL_TINY_EN, CLOUD_ON), "resume_grace": 30})
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    fire(page, "ready", {**READY, "language": "en", "task": "transcribe", "resume_token": "tok"})
    if audio_chunks:
        page.wait_for_function(f"window.__fake.emitted.filter(e => e[0] === 'audio').length >= {audio_chunks}")
    else:
        page.wait_for_function("window.livescribe.state === 'running'")


def sent_frames(page) -> int:
    return sum(e[1]["bytes"] for e in emitted(page, "audio")) // 2


def drop_and_come_back(page) -> int:
    """The connection drops and comes back; returns the frames sent before the drop."""
    fire(page, "disconnect", "transport close")
    before = sent_frames(page)
    fire(page, "connect")
    return before


def test_a_dropped_connection_keeps_the_session_and_sends_what_the_server_missed(fake_page):
    page = fake_page()
    start_resumable_session(page)
    hello = {"session_id": "s1", "segment_id": 0, "text": "Hello there.", "start": 0.0, "end": 1.0, "seq": 1}
    fire(page, "final", hello)
    fire(page, "disconnect", "transport close")
    before = sent_frames(page)
    assert "The session goes on" in page.inner_text(".alert[data-key=connection]")
    page.wait_for_timeout(500)  # the microphone goes on; its audio is kept, not sent
    assert sent_frames(page) == before
    assert page.evaluate("window.livescribe.state") == "running"

    fire(page, "connect")
    # The last event it has (`seq`), whose successors the server replays.
    assert emitted(page, "resume") == [["resume", {"session_id": "s1", "token": "tok", "after": 1}]]
    # The last 1.5 chunks sent before the drop never arrived (a dead socket takes a ping
    # timeout to notice): the server says how much it got, the page sends the rest.
    received = before - 2400
    resumed = {**READY, "language": "en", "task": "transcribe", "resume_token": "tok", "state": "running"}
    out = page.evaluate(
        """([payload, mark]) => {
            window.__fake.fire('resumed', payload);
            const audio = window.__fake.emitted.slice(mark).filter(e => e[0] === 'audio');
            return {sizes: audio.map(e => e[1].bytes), sent: window.livescribe.audioSecondsSent};
        }""",
        [{**resumed, "received": received, "next_segment_id": 2}, len(emitted(page))],
    )
    assert out["sizes"][:2] == [1600, 3200]  # from the middle of the chunk it stopped in
    assert sum(out["sizes"]) == round(out["sent"] * 16000) * 2 - received * 2
    assert "Reconnected" in page.inner_text(".alert[data-key=resumed]")
    fire(page, "final", {"session_id": "s1", "segment_id": 1, "text": "Said while away.", "start": 1.0, "end": 2.0})
    assert finals_text(page_finals(page)) == "Hello there. Said while away."
    page.click("#stop-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'stop')")
    fire(page, "stopped", {"session_id": "s1", "duration": 3.0, "transcript": "", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert not page.page_errors


def test_a_session_the_server_could_not_keep_is_reported_lost(fake_page):
    page = fake_page()
    start_resumable_session(page)
    fire(page, "disconnect", "transport close")
    page.click("#stop-btn")  # while away: the stop waits for the session to be back
    page.wait_for_timeout(200)
    assert emitted(page, "stop") == []
    fire(page, "connect")
    assert emitted(page, "resume")[0][1]["after"] == -1
    fire(page, "error", {"code": "not_resumable", "message": "session s1 cannot be resumed", "fatal": False})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert "the server ended the session" in page.inner_text("#alerts")
    assert emitted(page, "stop") == [] and page.is_visible("#start-btn")
    assert not page.page_errors


def test_a_resume_that_finds_the_session_ended_shows_its_end_and_what_was_not_sent(fake_page):
    page = fake_page()
    start_resumable_session(page)
    fire(page, "disconnect", "transport close")
    before = sent_frames(page)
    page.wait_for_timeout(300)
    fire(page, "connect")
    mark = len(emitted(page))
    # Away longer than the grace: the server stopped the session; its end is replayed.
    resumed = {**READY, "language": "en", "task": "transcribe", "resume_token": "tok", "state": "stopped"}
    fire(page, "resumed", {**resumed, "received": before, "next_segment_id": 0})
    fire(page, "stopped", {"session_id": "s1", "duration": before / 16000, "transcript": "", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert [e for e in emitted(page)[mark:] if e[0] == "audio"] == []  # nothing into a dead session
    assert page.locator(".alert[data-code=audio_lost]").count() == 1
    assert "Session ended after" in page.inner_text("#session-state")
    page.wait_for_timeout(300)  # the microphone is off: nothing more goes out
    assert [e for e in emitted(page)[mark:] if e[0] == "audio"] == []
    assert not page.page_errors


def clocked_fake_page(launch, static_url):
    """The page with the scripted Socket.IO and Playwright's clock (timers run on demand)."""
    browser = launch()
    page = browser.new_page()
    page.clock.install()
    page.route(
        "**/static/vendor/socket.io.min.js",
        lambda route: route.fulfill(body=FAKE_SOCKET_IO_JS, content_type="text/javascript"),
    )
    page.goto(f"{static_url}/static/index.html")
    page.wait_for_function("window.__fake && window.__fake.fire && window.livescribe")
    return page


def test_a_ready_after_the_start_timed_out_is_stopped_not_shown(launch, static_url):
    page = clocked_fake_page(launch, static_url)
    fire(page, "connect")
    fire(page, "server_info", server_info(LOCAL_TINY_EN, CLOUD_ON))
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    page.clock.run_for(31_000)  # the page stops waiting for `ready`
    page.wait_for_function("window.livescribe.state === 'idle'")
    # A socket that reconnected sends the buffered start: its late `ready` must not leave a
    # session running that the page cannot stop (and that refuses every later start).
    fire(page, "ready", {**READY, "language": "en", "task": "transcribe"})
    page.clock.run_for(1000)
    assert len(emitted(page, "stop")) == 1 and page.evaluate("window.livescribe.state") == "idle"
    fire(page, "partial", {"session_id": "s1", "text": "ghost words", "start": 0, "end": 1})
    assert not page.is_visible("#partial")


# --- end to end against the real server -----------------------------------------------------

TRAILING_SILENCE = 8.0


def padded_wav(pcm: bytes, silence: float, path: Path) -> Path:
    """A 16 kHz mono s16 WAV of ``pcm`` followed by ``silence`` seconds of digital silence."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm + b"\x00\x00" * int(silence * 16000))
    return path


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with live_server(log) as url:
            yield url
    finally:
        if log.exists():
            print(f"server log: {log}")


# Installed before the page's scripts: records, with timestamps, when a non-empty grey
# partial and the first final appeared, the partial's colour, and the peak input level.
OBSERVER_JS = """
window.__probe = {firstPartialAt: null, firstFinalAt: null, partialColor: null, finalColor: null,
                  partialTexts: [], maxLevel: 0};
document.addEventListener('DOMContentLoaded', () => {
  const probe = window.__probe;
  const partial = document.getElementById('partial');
  const finals = document.getElementById('finals');
  const level = document.getElementById('level');
  new MutationObserver(() => {
    const text = partial.textContent.trim();
    if (!partial.hidden && text) {
      if (probe.firstPartialAt === null) {
        probe.firstPartialAt = performance.now();
        probe.partialColor = getComputedStyle(partial).color;
      }
      if (probe.partialTexts.at(-1) !== text) probe.partialTexts.push(text);
    }
  }).observe(partial, {childList: true, subtree: true, characterData: true, attributes: true});
  new MutationObserver(() => {
    const first = finals.querySelector('.final-text');
    if (first && probe.firstFinalAt === null) {
      probe.firstFinalAt = performance.now();
      // The settle animation starts grey: read the colour once it is over.
      setTimeout(() => { probe.finalColor = getComputedStyle(first).color; }, 900);
    }
  }).observe(finals, {childList: true});
  new MutationObserver(() => {
    probe.maxLevel = Math.max(probe.maxLevel, Number(level.getAttribute('aria-valuenow')));
  }).observe(level, {attributes: true, attributeFilter: ['aria-valuenow']});
});
"""


def rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def page_finals(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#finals .final-text",
        "els => els.map(e => ({id: Number(e.dataset.segmentId), text: e.textContent, "
        "joins_previous: e.dataset.joinsPrevious === 'true'}))",
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_live_captions_from_the_microphone_end_to_end(launch, server_url, tmp_path, en00):
    from bench.wer import wer

    reference, duration = en00.text, en00.duration
    # Chromium loops the fake capture file. Trailing silence makes the stop point forgiving on
    # a loaded machine: stopping anywhere in it sends the whole stream once and nothing more.
    wav = padded_wav(en00.pcm, TRAILING_SILENCE, tmp_path / "capture.wav")
    browser = launch(fake_audio=wav)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    context.add_init_script(OBSERVER_JS)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(server_url + "/")

    page.wait_for_function("window.livescribe && window.livescribe.connection === 'connected'", timeout=20000)
    page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
    assert page.inner_text("#conn-state") == "Connected"
    # No cloud key in the test server's environment: cloud is greyed out, with the reason.
    assert page.is_disabled("#backend-cloud")
    assert "unavailable" in page.inner_text("#backend-hint").lower()
    assert page.is_checked("#backend-local")

    page.click("#start-btn")
    page.wait_for_function("window.livescribe.state === 'running'", timeout=30000)
    assert page.is_disabled("#backend-local"), "the engine toggle is locked while a session runs"
    ready = page.evaluate("window.livescribe.session")
    assert ready["backend"] == "local"

    # A second page watches the session's room (read-only).
    watcher = context.new_page()
    watcher.goto(f"{server_url}/?room={ready['room']}")
    watcher.wait_for_function("window.livescribe && window.livescribe.connection === 'connected'", timeout=20000)
    assert watcher.is_hidden("#start-btn") and watcher.is_hidden("#session-card")
    # Its status names the watched session's engine and device (from joined + server_info).
    watcher.wait_for_function(
        "(name) => document.getElementById('status-device').textContent.includes(name)",
        arg=ready["device_name"],
        timeout=10000,
    )
    assert "Local" in watcher.inner_text("#status-backend")

    page.wait_for_function(
        f"window.livescribe.audioSecondsSent >= {duration * 0.75}", timeout=(duration + 60) * 1000, polling=200
    )
    page.screenshot(path=str(tmp_path / "live-desktop.png"))
    # A CPU-starved fake capture can lag the file behind the session clock (a last phrase was
    # seen 2.5 s late): stop well into the trailing silence, so the whole file is heard.
    page.wait_for_function(f"window.livescribe.audioSecondsSent >= {duration + 3.0}", timeout=60000, polling=100)
    page.click("#stop-btn")
    page.wait_for_function("window.livescribe.state === 'idle'", timeout=120000)
    sent = page.evaluate("window.livescribe.audioSecondsSent")
    assert duration + 3.0 <= sent < duration + TRAILING_SILENCE, f"{sent:.2f} s sent: the file looped"
    assert page.evaluate("window.livescribe.contextSampleRate") is None  # microphone released

    # Finals match the reference.
    finals = page_finals(page)
    hypothesis = finals_text(finals)
    error_rate = wer(reference, hypothesis)
    print(f"WER {error_rate:.3f} over {len(finals)} finals; hypothesis: {hypothesis}")
    assert finals, f"no finals on the page; console: {console[-20:]}"
    assert error_rate < WER_BOUND, f"WER {error_rate:.3f} >= {WER_BOUND}: {hypothesis!r}"
    assert [f["id"] for f in finals] == sorted(f["id"] for f in finals)

    # A grey partial came first, and the partial was cleared at the end.
    probe = page.evaluate("window.__probe")
    assert probe["firstPartialAt"] is not None, "no partial was ever shown"
    assert probe["firstPartialAt"] < probe["firstFinalAt"], "the first final arrived before any partial"
    r, g, b = rgb(probe["partialColor"])
    assert max(r, g, b) - min(r, g, b) < 40 and 90 < (r + g + b) / 3 < 200, f"partial not grey: {probe['partialColor']}"
    assert rgb(probe["finalColor"]) != rgb(probe["partialColor"])
    assert page.is_hidden("#partial")
    assert probe["maxLevel"] > 40, "the input level meter never moved"

    # Status at a glance.
    assert "Local" in page.inner_text("#status-backend")
    device = page.inner_text("#status-device")
    assert ready["device_name"] and ready["device_name"] in device
    assert ready["compute_type"] in device
    assert page.inner_text("#status-model") == ready["model"]
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.inner_text("#status-latency"))
    minutes, seconds = page.inner_text("#session-timer").split(":")
    assert int(minutes) * 60 + int(seconds) >= int(duration) - 2

    # The .srt download is well-formed and carries the page's finals.
    with page.expect_download() as info:
        page.click("#download-srt")
    srt_path = tmp_path / info.value.suggested_filename
    info.value.save_as(srt_path)
    assert srt_path.suffix == ".srt"
    srt_text = srt_path.read_text(encoding="utf-8")
    cues = list(srt.parse(srt_text))
    assert [c.index for c in cues] == list(range(1, len(cues) + 1))
    # Cues are caption lines: finals grouped in order, nothing lost or repeated.
    assert " ".join(c.content for c in cues) == hypothesis
    assert 0 < len(cues) <= len(finals)
    assert all(c.start <= c.end for c in cues)
    assert all(a.start <= b.start for a, b in itertools.pairwise(cues))
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt_text)
    # Cues are on the session's audio clock: none ends after the audio sent.
    assert cues[-1].end.total_seconds() <= sent + 0.05

    # The watcher received the same finals (it joined a moment after `ready`, so it may
    # lack the very first ones, never the rest) and saw the session end.
    watcher.wait_for_function("document.getElementById('watch-state').textContent.includes('ended')", timeout=20000)
    watched = page_finals(watcher)
    assert watched, "the watch page received no finals"
    first = watched[0]["id"]
    assert watched == [f for f in finals if f["id"] >= first]
    assert len(watched) >= len(finals) - 2
    watcher.screenshot(path=str(tmp_path / "watch-desktop.png"))

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(tmp_path / "live-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal overflow at phone width"
    assert not [c for c in console if c.startswith(("error", "pageerror"))], console
    print(f"screenshots in {tmp_path}")


@pytest.mark.timeout(240)
def test_a_network_failure_mid_session_loses_nothing(launch, server_url, tmp_path, en00):
    # The page reaches the server through a proxy whose connections are reset mid-phrase
    # (12.5 s, inside "Please enter the number to be removed from the blacklist"): the page
    # reconnects, resumes the session, and sends what the server never got. Every second the
    # microphone captured is in the session, and the transcript is whole.
    from bench.wer import wer

    clip = en00.clip(25.0)
    wav = padded_wav(clip.pcm, TRAILING_SILENCE, tmp_path / "capture.wav")
    proxy = CuttableProxy(int(server_url.rsplit(":", 1)[1]))
    browser = launch(fake_audio=wav)
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        page.goto(proxy.url + "/")
        page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
        page.click("#start-btn")
        page.wait_for_function("window.livescribe.state === 'running'", timeout=30000)
        page.wait_for_function("window.livescribe.audioSecondsSent >= 12.5", timeout=60000, polling=50)
        assert proxy.cut() >= 1
        page.wait_for_function("window.livescribe.connection !== 'connected'", timeout=10000, polling=20)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.alert')].some(a => a.textContent.includes('Reconnected'))",
            timeout=30000,
        )
        page.wait_for_function(f"window.livescribe.audioSecondsSent >= {clip.duration + 3.0}", timeout=60000)
        page.click("#stop-btn")
        page.wait_for_function("window.livescribe.state === 'idle'", timeout=60000)
    finally:
        proxy.close()
    sent = page.evaluate("window.livescribe.audioSecondsSent")
    # The session's duration (its `stopped`) is where the page's next session would start.
    duration = page.evaluate("window.livescribe.transcript.offsetFor('next')")
    assert duration == pytest.approx(sent, abs=0.02), f"captured {sent:.2f} s, the session took {duration:.2f} s"
    finals = page_finals(page)
    assert [f["id"] for f in finals] == list(range(len(finals))), "a final was lost or shown twice"
    hypothesis = finals_text(finals)
    assert wer(clip.text, hypothesis) < WER_BOUND, hypothesis
    assert page.locator(".alert[data-kind=error]").count() == 0, page.inner_text("#alerts")
    assert not [line for line in console if line.startswith(("pageerror", "error"))], console


@pytest.mark.timeout(180)
def test_muting_mid_phrase_finalises_it_from_the_real_server(launch, server_url, tmp_path, en00):
    # Muted 9.5 s into en00, inside "Please enter your phone number, starting with the area
    # code." (6.6-9.9 s; a starved fake capture may lag the file by seconds, so the phrase has
    # begun at least): no silence reaches the server, so only its idle finalisation can commit it.
    wav = padded_wav(en00.clip(12.0).pcm, TRAILING_SILENCE, tmp_path / "capture.wav")
    page = launch(fake_audio=wav).new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
    page.click("#start-btn")
    page.wait_for_function("window.livescribe.state === 'running'", timeout=30000)
    page.wait_for_function("window.livescribe.audioSecondsSent >= 9.5", timeout=60000, polling=50)
    page.click("#mute-btn")
    page.evaluate("window.__muted_state = document.getElementById('session-state').textContent")
    sent = page.evaluate("window.livescribe.audioSecondsSent")
    page.wait_for_function(
        "[...document.querySelectorAll('#finals .final-text')].some(e => /please/i.test(e.textContent))",
        timeout=20000,
    )
    page.wait_for_selector("#partial", state="hidden", timeout=10000)
    assert page.evaluate("window.livescribe.state") == "running" and page.evaluate("window.livescribe.muted")
    assert page.evaluate("window.livescribe.audioSecondsSent") == sent, "audio went out while muted"
    page.click("#mute-btn")
    page.wait_for_function(f"window.livescribe.audioSecondsSent >= {sent + 1.0}", timeout=20000)
    page.click("#stop-btn")
    page.wait_for_function("window.livescribe.state === 'idle'", timeout=60000)
    assert page.evaluate("window.__muted_state").endswith("is finalised in about 1 s.")  # server_info.idle_final


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("fake_device", "expected"),
    [(True, "microphone access was blocked"), (False, "no microphone was found")],
    ids=["permission-denied", "no-device"],
)
def test_microphone_failures_are_explained(launch, server_url, tmp_path, fake_device, expected):
    # Without the fake-UI flag nothing grants the permission prompt: the request is refused.
    browser = launch(fake_device=fake_device, fake_ui=False)
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
    page.click("#start-btn")
    alert = page.wait_for_selector(".alert[data-code='microphone']", timeout=20000)
    assert expected in alert.inner_text().lower()
    assert page.evaluate("window.livescribe.state") == "idle"
    assert page.is_enabled("#start-btn"), "the user can try again"
    page.screenshot(path=str(tmp_path / "mic-failure.png"))


@pytest.mark.timeout(120)
def test_server_refusal_is_shown_in_plain_words(launch, server_url, tmp_path, en00):
    browser = launch(fake_audio=en00.path)
    page = browser.new_page()
    page.goto(server_url + "/")
    page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
    # Ask for a language the page does not offer (as a stale or tampered page might).
    page.evaluate("""() => {
        const select = document.getElementById('language');
        select.disabled = false;
        select.add(new Option('Klingon', 'tlh'));
        select.value = 'tlh';
    }""")
    page.click("#start-btn")
    alert = page.wait_for_selector(".alert[data-code='unsupported_language']", timeout=20000)
    assert "cannot transcribe that language" in alert.inner_text()
    page.wait_for_function("window.livescribe.state === 'idle'", timeout=10000)
    assert page.evaluate("window.livescribe.contextSampleRate") is None  # microphone released


def test_page_references_only_vendored_assets():
    """The page works offline: every script and stylesheet comes from /static/."""
    html = (REPO / "static" / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"#]+)"', html):
        if url.startswith("data:") or url == "/":
            continue
        assert url.startswith("/static/"), url
        assert (REPO / url.lstrip("/")).is_file(), url
    vendored = (REPO / "static" / "vendor" / "socket.io.min.js").read_text()[:200]
    assert re.search(r"Socket\.IO v4\.\d+\.\d+", vendored)
    assert (REPO / "static" / "vendor" / "socket.io-client.LICENSE").is_file()
    assert Path(REPO / "static" / "worklet" / "pcm-worklet.js").is_file()


def test_a_short_caption_line_stays_up_as_a_cue_until_the_next_line(module_page):
    times = module_page.evaluate(
        """async () => {
          const { Transcript } = await import('/static/lib/transcript.js');
          const t = new Transcript();
          // A one-word line whose word ends where it starts, then the next line 0.3 s later.
          t.addFinal({session_id: 'a', segment_id: 0, text: 'Extension.', start: 1.0, end: 1.0});
          t.addFinal({session_id: 'a', segment_id: 1, text: 'Press three.', start: 1.3, end: 2.5});
          t.addFinal({session_id: 'a', segment_id: 2, text: 'Goodbye.', start: 5.0, end: 5.2});
          return t._cues().map((c) => [c.start, c.end]);
        }"""
    )
    assert [t for cue in times for t in cue] == pytest.approx([1.0, 1.3, 1.3, 2.5, 5.0, 5.8])


# --- resuming after a dropped connection: cases a review found -----------------------------

RESUMED = {**READY, "language": "en", "task": "transcribe", "resume_token": "tok"}


def test_a_resume_into_an_ended_session_does_not_say_it_goes_on(fake_page):
    page = fake_page()
    start_resumable_session(page)
    before = drop_and_come_back(page)
    fire(page, "resumed", {**RESUMED, "state": "stopped", "received": before, "next_segment_id": 0})
    fire(page, "stopped", {"session_id": "s1", "duration": before / 16000, "transcript": "", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    alerts = page.inner_text("#alerts")
    print("ALERTS:", alerts)
    assert "the session goes on" not in alerts.lower(), alerts


def test_giving_a_session_up_takes_back_the_promise_that_it_goes_on(launch, static_url):
    page = clocked_fake_page(launch, static_url)
    start_resumable_session(page, audio_chunks=0)
    fire(page, "disconnect", "transport close")
    assert "The session goes on" in page.inner_text(".alert[data-key=connection]")
    page.clock.run_for(71_000)  # 2 * grace + 10 s: the client gives the session up
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert page.evaluate("window.livescribe.connection") == "reconnecting"
    alerts = page.inner_text("#alerts")
    print("ALERTS:", alerts)
    assert "the server ended the session" in alerts
    assert "The session goes on" not in alerts, alerts


def test_a_resume_into_a_stopping_session_sends_no_more_audio(fake_page):
    page = fake_page()
    start_resumable_session(page)
    before = drop_and_come_back(page)
    mark = len(emitted(page))
    # The grace ran out a moment ago: the server is finishing the session (state stopping,
    # its `stopped` follows once the last finals are out). It takes no audio: `audio` from
    # this connection is answered `not_started` (server/sessions.py _running).
    fire(page, "resumed", {**RESUMED, "state": "stopping", "received": before, "next_segment_id": 0})
    page.wait_for_timeout(800)
    after = [e for e in emitted(page)[mark:] if e[0] == "audio"]
    print("state:", page.evaluate("window.livescribe.state"), "audio emitted after resumed{stopping}:", len(after))
    print("ALERTS:", page.inner_text("#alerts"))
    assert after == [], f"{len(after)} audio chunks sent into a stopping session"


def test_the_watch_view_clears_the_partial_of_a_session_that_ended_while_away(fake_page):
    page = fake_page("?room=abc123")
    fire(page, "connect")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'join')")
    fire(page, "joined", {"room": "abc123", "sessions": [{"session_id": "s9", "backend": "local", "language": "en"}]})
    fire(page, "final", {"session_id": "s9", "segment_id": 0, "text": "Hello there.", "start": 0.0, "end": 1.0})
    fire(page, "partial", {"session_id": "s9", "text": "please enter the", "start": 1.2, "end": 2.0})
    fire(page, "disconnect", "transport close")
    # Away: the speaker stops; the session's `stopped` goes to the room, not to this page.
    fire(page, "connect")
    page.wait_for_function("window.__fake.emitted.filter(e => e[0] === 'join').length === 2")
    fire(page, "joined", {"room": "abc123", "sessions": []})
    page.wait_for_function("document.getElementById('watch-state').textContent.startsWith('Waiting')")
    print("watch-state:", page.inner_text("#watch-state"), "| partial visible:", page.is_visible("#partial"))
    assert not page.is_visible("#partial"), "the ended session's words-in-progress stay on screen"


@pytest.mark.timeout(240)
def test_audio_buffered_by_socketio_does_not_reach_the_new_connection_before_resume(launch, server_url, tmp_path, en00):
    # A laptop that sleeps: on waking, the wall clock (Date.now) has jumped while the
    # monotonic timers (setTimeout) have not run. Engine.IO's emit path sees the ping
    # deadline passed (Date.now() > _pingTimeoutTime), buffers the packet in the Socket.IO
    # sendBuffer and closes the transport ("ping timeout"). On reconnect socket.io-client
    # flushes that buffer before the `connect` handlers run, i.e. before `resume`.
    wav = padded_wav(en00.clip(12.0).pcm, TRAILING_SILENCE, tmp_path / "capture.wav")
    page = launch(fake_audio=wav).new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server_url + "/")
    page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
    page.click("#start-btn")
    page.wait_for_function("window.livescribe.state === 'running'", timeout=30000)
    page.wait_for_function("window.livescribe.audioSecondsSent >= 3", timeout=60000, polling=50)
    # The machine slept 25 s: wall time jumps, monotonic timers do not.
    page.evaluate("() => { const real = Date.now.bind(Date); Date.now = () => real() + 25000; }")
    page.wait_for_function("window.livescribe.connection !== 'connected'", timeout=10000, polling=10)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.alert')].some(a => a.textContent.includes('Reconnected'))",
        timeout=30000,
    )
    page.wait_for_timeout(1000)
    alerts = page.inner_text("#alerts")
    print("ALERTS:", alerts)
    page.click("#stop-btn")
    page.wait_for_function("window.livescribe.state === 'idle'", timeout=60000)
    assert page.locator(".alert[data-kind=error]").count() == 0, alerts


# Records every `error` the page's socket receives (the page keeps at most 5 alerts).
ERROR_RECORDER_JS = """
window.__errors = [];
window.__resumed = [];
(() => {
  let wrapped;
  Object.defineProperty(window, 'io', {
    configurable: true,
    get() { return wrapped; },
    set(real) {
      wrapped = (...args) => {
        const socket = real(...args);
        socket.on('error', (p) => window.__errors.push(p));
        socket.on('resumed', (p) => window.__resumed.push(p));
        return socket;
      };
    },
  });
})();
"""


@pytest.mark.timeout(300)
def test_refused_audio_does_not_make_a_second_resume_send_audio_twice(launch, tmp_path, en00):
    wav = padded_wav(en00.clip(30.0).pcm, TRAILING_SILENCE, tmp_path / "capture.wav")
    with live_server(tmp_path / "server.log", "--max-backlog", "2") as url:
        proxy = CuttableProxy(int(url.rsplit(":", 1)[1]))
        browser = launch(fake_audio=wav)
        context = browser.new_context()
        context.add_init_script(ERROR_RECORDER_JS)
        page = context.new_page()
        try:
            page.goto(proxy.url + "/")
            page.wait_for_selector("#start-btn:not([disabled])", timeout=20000)
            page.click("#start-btn")
            page.wait_for_function("window.livescribe.state === 'running'", timeout=30000)
            page.wait_for_function("window.livescribe.audioSecondsSent >= 3", timeout=60000, polling=50)
            # The network is down for 6 s: 6 s of audio is kept and sent again in one burst,
            # more than --max-backlog 2 takes: some of it is refused (`overloaded`).
            proxy.paused = True
            assert proxy.cut() >= 1
            page.wait_for_function("window.livescribe.connection !== 'connected'", timeout=10000, polling=20)
            page.wait_for_timeout(6000)
            proxy.paused = False
            page.wait_for_function("window.__resumed.length === 1", timeout=30000)
            page.wait_for_function("window.__errors.some(e => e.code === 'overloaded')", timeout=10000)
            # Let the backlog drain (no refusal for 3 s).
            page.wait_for_function(
                """() => { const n = window.__errors.length;
                    if (window.__n !== n) { window.__n = n; window.__since = performance.now(); return false; }
                    return performance.now() - window.__since > 3000; }""",
                timeout=60000,
                polling=200,
            )
            refused_before = page.evaluate("window.__errors.filter(e => e.code === 'overloaded').length")
            # A second short drop.
            assert proxy.cut() >= 1
            page.wait_for_function("window.__resumed.length === 2", timeout=30000)
            print("resumed:", page.evaluate("window.__resumed.map(r => [r.state, r.received])"))
            page.wait_for_timeout(2000)
            page.click("#stop-btn")
            page.wait_for_function("window.livescribe.state === 'idle'", timeout=60000)
        finally:
            proxy.close()
    errors = page.evaluate("window.__errors")
    refused = [e for e in errors if e.get("code") == "overloaded"]
    print("errors:", [e.get("code") for e in errors])
    sent = page.evaluate("window.livescribe.audioSecondsSent")
    duration = page.evaluate("window.livescribe.transcript.offsetFor('next')")
    expected = sent - 0.1 * len(refused)  # every page chunk is 100 ms
    print(
        f"sent {sent:.2f} s, refused {len(refused)} chunks ({refused_before} before the 2nd drop) -> "
        f"expected {expected:.2f} s in the session, the session took {duration:.2f} s"
    )
    print("finals:", finals_text(page_finals(page)))
    assert duration == pytest.approx(expected, abs=0.05), "audio the server already had was sent again"


def test_the_reconnected_alert_goes_with_its_session(fake_page):
    page = fake_page()
    start_resumable_session(page)
    before = drop_and_come_back(page)
    fire(page, "resumed", {**RESUMED, "state": "running", "received": before, "next_segment_id": 0})
    page.click("#stop-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'stop')")
    fire(page, "stopped", {"session_id": "s1", "duration": 3.0, "transcript": "", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.filter(e => e[0] === 'start').length === 2")
    fire(page, "ready", {**RESUMED, "session_id": "s2", "room": "s2"})
    page.wait_for_function("window.livescribe.state === 'running'")
    alerts = page.inner_text("#alerts")
    print("ALERTS during the next session:", alerts)
    assert "Reconnected" not in alerts, alerts


# --- review: scenarios checked and found fine ------------------------------------------------


def test_resume_stop_lost_in_the_drop_is_sent_again_after_the_audio(fake_page):
    page = fake_page()
    start_resumable_session(page)
    page.click("#stop-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'stop')")
    fire(page, "disconnect", "transport close")  # the stop went into the dead connection
    before = sent_frames(page)
    fire(page, "connect")
    mark = len(emitted(page))
    fire(page, "resumed", {**RESUMED, "state": "running", "received": before - 3200, "next_segment_id": 0})
    out = emitted(page)[mark:]
    assert [e[0] for e in out][-1] == "stop" and [e[0] for e in out].count("stop") == 1
    assert sum(e[1]["bytes"] for e in out if e[0] == "audio") == 6400
    fire(page, "stopped", {"session_id": "s1", "duration": before / 16000, "transcript": "", "analysis": {}})
    page.wait_for_function("window.livescribe.state === 'idle'")
    assert not page.page_errors


def test_resume_two_drops_before_resumed(fake_page):
    page = fake_page()
    start_resumable_session(page)
    fire(page, "final", {"session_id": "s1", "segment_id": 0, "text": "Hello.", "start": 0.0, "end": 1.0, "seq": 4})
    before = drop_and_come_back(page)
    fire(page, "disconnect", "ping timeout")
    page.wait_for_timeout(300)
    page.click("#mute-btn")  # muted while away: nothing kept meanwhile
    page.wait_for_timeout(300)
    page.click("#mute-btn")
    page.wait_for_timeout(300)
    fire(page, "connect")
    resumes = emitted(page, "resume")
    assert [r[1]["after"] for r in resumes] == [4, 4]
    recorded = round(page.evaluate("window.livescribe.audioSecondsSent") * 16000)
    out = page.evaluate(
        """([payload, mark]) => {
            window.__fake.fire('resumed', payload);
            return window.__fake.emitted.slice(mark).filter(e => e[0] === 'audio').map(e => e[1].bytes);
        }""",
        [{**RESUMED, "state": "running", "received": before, "next_segment_id": 1}, len(emitted(page))],
    )
    assert sum(out) // 2 == recorded - before
    assert page.evaluate("window.livescribe.state") == "running"
    assert not page.page_errors


def test_resume_give_up_timer_cleared_by_resume(launch, static_url):
    page = clocked_fake_page(launch, static_url)
    start_resumable_session(page, audio_chunks=0)
    fire(page, "disconnect", "transport close")
    page.clock.run_for(5_000)
    fire(page, "connect")
    fire(page, "resumed", {**RESUMED, "state": "running", "received": 0, "next_segment_id": 0})
    page.clock.run_for(120_000)
    assert page.evaluate("window.livescribe.state") == "running"
    assert "ended the session" not in page.inner_text("#alerts")


def test_resume_f32_and_48k_slicing(module_page):
    out = module_page.evaluate("""async () => {
      const { LivescribeClient } = await import('/static/lib/client.js');
      const handlers = {}; const sent = [];
      const socket = { connected: true, io: { on() {} }, on(e, f) { (handlers[e] ||= []).push(f); },
        emit(e, p) { sent.push([e, p]); } };
      const fire = (e, p) => (handlers[e] || []).forEach((f) => f(p));
      const c = new LivescribeClient({ io: () => socket });
      fire('connect'); fire('server_info', { resume_grace: 30 });
      c.start({ sample_rate: 48000, encoding: 'pcm_f32le' });
      fire('ready', { session_id: 'x', resume_token: 't', sample_rate: 48000, encoding: 'pcm_f32le' });
      for (let k = 0; k < 5; k++) c.sendAudio(new Float32Array(4800).fill(k));
      fire('disconnect', 'transport close');
      for (let k = 5; k < 8; k++) c.sendAudio(new Float32Array(4800).fill(k));
      fire('connect');
      const mark = sent.length;
      fire('resumed', { session_id: 'x', state: 'running', received: 4800 * 3 + 1200 });
      return sent.slice(mark).filter((e) => e[0] === 'audio').map((e) => [e[1].byteLength, new Float32Array(e[1])[0]]);
    }""")
    assert out == [[3600 * 4, 3], [4800 * 4, 4], [4800 * 4, 5], [4800 * 4, 6], [4800 * 4, 7]]


def test_resume_drop_while_starting(fake_page):
    page = fake_page()
    fire(page, "connect")
    fire(page, "server_info", {**server_info(LOCAL_TINY_EN, CLOUD_ON), "resume_grace": 30})
    page.click("#start-btn")
    page.wait_for_function("window.__fake.emitted.some(e => e[0] === 'start')")
    fire(page, "disconnect", "transport close")
    page.wait_for_function("window.livescribe.state === 'idle'")
    fire(page, "connect")
    assert emitted(page, "resume") == [] and emitted(page, "audio") == []
    assert page.is_enabled("#start-btn")
    assert not page.page_errors


def test_leaving_the_page_says_goodbye_so_the_server_ends_the_session_at_once(fake_page):
    # A closed tab only drops its transport, which the server would take for a network
    # failure and keep the session 30 s for a resume that cannot come.
    page = fake_page()
    start_resumable_session(page)
    page.evaluate("window.dispatchEvent(new PageTransitionEvent('pagehide', {persisted: false}))")
    assert page.evaluate("window.livescribe.connection") == "disconnected"
    assert emitted(page, "resume") == []
