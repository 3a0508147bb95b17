"""backends.local: one window decode with the real model, and the forced prefix."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from backends.base import DecodeOptions, word_key
from backends.local import MAX_TOKENS_PER_SECOND, MIN_NEW_TOKENS, _after_key_chars, encoder_frames_for
from bench.wer import normalize, wer
from server.agreement import drop_repetitions
from tests.conftest import Fixture

SR = 16000


def utterance(fixture: Fixture, index: int, pad: float = 0.2) -> tuple[np.ndarray, str]:
    u = fixture.reference["utterances"][index]
    return fixture.audio[int((u["start"] - pad) * SR) : int((u["end"] + pad) * SR)], u["text"]


def test_decode_of_a_short_window_in_a_reduced_encoder_context(local_backend, en00: Fixture):
    audio, text = utterance(en00, 2)  # "Please enter your phone number, starting with the area code."
    result = local_backend.decode(audio, DecodeOptions(language="en", encoder_frames=encoder_frames_for(len(audio))))
    words = [w for s in result.segments for w in s.words]
    assert wer(text, " ".join(w.text for w in words)) < 0.25
    assert all(0 <= w.start <= w.end <= len(audio) / SR + 0.05 for w in words)


def test_a_forced_prefix_gives_context_and_only_the_new_words_come_back(local_backend, en00: Fixture):
    before, before_text = utterance(en00, 1)  # "Press 1 for"
    after, after_text = utterance(en00, 2)
    lead = len(before) / SR
    # Committed words of the first utterance, timed in the decoded audio (as the pipeline does).
    prefix = local_backend.decode(before, DecodeOptions(language="en"))
    prefix_words = tuple(w for s in prefix.segments for w in s.words)
    assert wer(before_text, " ".join(w.text for w in prefix_words)) <= 0.34  # tiny.en: "Press 1-4."
    audio = np.concatenate([before, after])
    result = local_backend.decode(
        audio,
        DecodeOptions(language="en", prefix=prefix_words, encoder_frames=encoder_frames_for(len(audio))),
    )
    words = [w for s in result.segments for w in s.words]
    assert wer(after_text, " ".join(w.text for w in words)) < 0.25  # nothing of the prefix again
    assert words[0].start >= lead - 0.3  # timed in the second utterance's audio


def test_the_rest_of_a_word_after_its_forced_start():
    assert _after_key_chars(" touchtone", 5) == "tone"
    assert _after_key_chars(" non-administrator", 3) == "-administrator"
    assert _after_key_chars(" it's", 2) == "'s"
    assert _after_key_chars(" touch.", 5) == ""  # punctuation alone is no new word
    assert _after_key_chars(" touch", 5) == ""


def test_a_word_that_goes_on_from_the_forced_prefix_keeps_its_new_part(local_backend, en00: Fixture):
    # "... using your touchtone keypad": forced through "Using your touch" (as the pipeline
    # forces what it committed), tiny.en goes on with the same word, " touchtone". Its new
    # part is speech: dropping the word with the prefix once lost "tone" from every final.
    u = en00.reference["utterances"][6]
    assert "touchtone keypad" in u["text"]
    audio = en00.audio[int((u["start"] - 0.64) * SR) : int((u["start"] + 4.06) * SR)]
    options = DecodeOptions(language="en", encoder_frames=encoder_frames_for(len(audio)))
    said = [w for s in local_backend.decode(audio, options).segments for w in s.words]
    touch = next(i for i, w in enumerate(said) if word_key(w.text).startswith("touch"))
    prefix = (*said[:touch], dataclasses.replace(said[touch], text=" touch"))
    result = local_backend.decode(audio, dataclasses.replace(options, prefix=prefix))
    new = [w for s in result.segments for w in s.words]
    # Prefix and new words hold the reference's words up to "keypad" (the rest of a word
    # joins it without a space; a compound may come in two).
    written = "".join(normalize("".join(w.text for w in (*prefix, *new))))
    assert written.startswith("".join(normalize("using your touchtone keypad"))), written
    assert word_key(new[0].text) == "tone"


def test_a_prefix_covering_all_the_speech_leaves_nothing_new(local_backend, en00: Fixture):
    audio, _ = utterance(en00, 2)
    said = local_backend.decode(audio, DecodeOptions(language="en"))
    prefix = tuple(w for s in said.segments for w in s.words)
    result = local_backend.decode(
        np.concatenate([audio, np.zeros(SR // 2, np.float32)]),
        DecodeOptions(language="en", prefix=prefix, encoder_frames=1000),
    )
    new = [w for s in result.segments for w in s.words]
    # Whisper may say the end of the prefix again (here " Starting with the area code."); the
    # pipeline's repetition guard removes that, and nothing else may remain.
    guarded = drop_repetitions([*prefix, *new], keep=len(prefix))[len(prefix) :]
    assert len(guarded) <= 1, [w.text for w in guarded]


def test_a_looping_decode_stops_at_a_token_budget_for_its_audio(local_backend, en01: Fixture):
    # The first 0.4 s of "Please enter ..." on its own: tiny.en loops "Please. Please. ..." to
    # Whisper's 448-token limit (101 words, 1.4 s of CPU) unless the decode is bounded by the
    # length of its audio.
    start = int((42.948 - 0.2) * SR)
    audio = en01.audio[start : start + int(0.4 * SR)]
    result = local_backend.decode(audio, DecodeOptions(language="en", encoder_frames=1000))
    words = [w for s in result.segments for w in s.words]
    budget = MIN_NEW_TOKENS + MAX_TOKENS_PER_SECOND * 0.4
    assert len(words) <= budget, [w.text for w in words]


def test_the_token_budget_leaves_room_for_a_long_prompt(local_backend, en00: Fixture, monkeypatch):
    seen = []
    model = local_backend.model
    original = model.generate_with_fallback

    def spy(encoder_output, prompt, tokenizer, options):
        seen.append((len(prompt), options.max_new_tokens))
        return original(encoder_output, prompt, tokenizer, options)

    monkeypatch.setattr(model, "generate_with_fallback", spy)
    audio, _ = utterance(en00, 2)
    local_backend.decode(audio, DecodeOptions(language="en", encoder_frames=1000))
    # 25 s of audio may write 316 tokens, but a 200-token prompt leaves fewer than that.
    long_prompt = " ".join(["number"] * 300)  # the last 200 tokens are kept
    local_backend.decode(en00.audio[: 25 * SR], DecodeOptions(language="en", prompt=long_prompt))
    (short, budget), (long, clipped) = seen
    assert budget == MIN_NEW_TOKENS + int(MAX_TOKENS_PER_SECOND * len(audio) / SR)
    assert short < 10 and long > 200
    assert clipped == model.max_length - long < MIN_NEW_TOKENS + MAX_TOKENS_PER_SECOND * 25


def test_decodes_wait_for_a_worker_and_urgent_ones_go_first(monkeypatch):
    import threading
    import time

    from backends.base import DecodeResult
    from backends.local import LocalBackend, LocalBackendOptions

    backend = LocalBackend(LocalBackendOptions(model="tiny.en", num_workers=1))
    started: list[str] = []
    release = threading.Event()

    def fake_decode(audio: np.ndarray, options: DecodeOptions) -> DecodeResult:
        started.append(options.prompt or "")
        release.wait(5)
        return DecodeResult(segments=(), language="en", language_probability=1.0, duration=0.1)

    monkeypatch.setattr(backend, "_decode", fake_decode)
    audio = np.zeros(1600, dtype=np.float32)
    threads = []
    for name, urgent in [("busy", False), ("step", False), ("final", True)]:
        options = DecodeOptions(prompt=name, urgent=urgent)
        threads.append(threading.Thread(target=backend.decode, args=(audio, options)))
        threads[-1].start()
        deadline = time.monotonic() + 5
        while len(started) + backend._gate.waiting < len(threads) and time.monotonic() < deadline:
            time.sleep(0.005)
    assert started == ["busy"] and backend.live_decodes == 3  # one worker: the others wait
    release.set()
    for thread in threads:
        thread.join(5)
    assert started == ["busy", "final", "step"]


def _nice_of_threads() -> dict[int, int]:
    """Nice value of each thread of this process (Linux /proc)."""
    import os

    nices = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        nices[int(tid)] = int(stat[stat.rindex(")") + 2 :].split()[16])
    return nices


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_model_threads_run_at_the_configured_nice_value_and_the_caller_does_not():
    import os

    from backends.local import LocalBackend, LocalBackendOptions

    base = os.getpriority(os.PRIO_PROCESS, 0)
    before = _nice_of_threads()
    backend = LocalBackend(LocalBackendOptions(model="tiny.en", num_workers=2, cpu_threads=1, warmup=False, nice=3))
    backend.load()
    started = {tid: nice for tid, nice in _nice_of_threads().items() if tid not in before}
    assert started and set(started.values()) == {min(19, base + 3)}  # CTranslate2's workers
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the caller's own priority is unchanged
    audio = np.zeros(SR, dtype=np.float32)
    assert backend.decode(audio, DecodeOptions(language="en", encoder_frames=encoder_frames_for(SR))).duration == 1.0
    backend.close()


def test_a_failing_model_load_on_the_helper_thread_is_raised_to_the_caller():
    from backends.local import _with_nice

    def fail() -> None:
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError, match="no such model"):
        _with_nice(2, fail)
    assert _with_nice(0, lambda: 7) == 7


def test_a_model_that_loads_but_cannot_run_stops_startup_with_the_fix(monkeypatch):
    # A GPU without cuBLAS: CTranslate2 counts the GPU, loads the model, and the first decode
    # fails. The warm-up finds it before the server accepts anyone, and says what to do.
    from backends.errors import BackendFailure, ConfigurationError
    from backends.local import LocalBackend, LocalBackendOptions

    def no_cublas(self, audio, options):
        raise BackendFailure("decoding failed: Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(LocalBackend, "decode", no_cublas)
    monkeypatch.setattr("backends.local.select_device", lambda requested: "cuda")
    monkeypatch.setattr("backends.local.select_compute_type", lambda device, requested: "int8")
    monkeypatch.setattr("backends.local.describe_device", lambda device: "a GPU")
    backend = LocalBackend(LocalBackendOptions(model="tiny.en", device="cpu", num_workers=1, cpu_threads=1))
    real_model = __import__("faster_whisper").WhisperModel

    def load_on_cpu(path, device, **kwargs):  # this machine has no GPU: load it on the CPU
        return real_model(path, device="cpu", **kwargs)

    monkeypatch.setattr("faster_whisper.WhisperModel", load_on_cpu)
    with pytest.raises(ConfigurationError) as raised:
        backend.load()
    assert "libcublas" in raised.value.message and "--device cpu" in raised.value.message
    assert not backend.ready


GREEN_NICE_SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "gevent":
        from gevent import monkey
        monkey.patch_all()
    else:
        import eventlet
        eventlet.monkey_patch()
    import json, os
    from backends.local import LocalBackend, LocalBackendOptions
    from tests.test_backends_local import _nice_of_threads as nices

    before = nices()
    backend = LocalBackend(LocalBackendOptions(model="tiny.en", num_workers=2, cpu_threads=1, warmup=False, nice=3))
    backend.load()
    after = nices()  # while the backend lives: its model's threads end with it
    print(json.dumps({
        "main": after[os.getpid()],
        "started": [n for tid, n in after.items() if tid not in before],
        "base": os.getpriority(os.PRIO_PROCESS, 0),
    }))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
@pytest.mark.parametrize("mode", ["gevent", "eventlet"])
def test_under_monkey_patching_only_the_model_threads_are_niced_not_the_event_loop(mode: str):
    # Patched, threading.Thread is a greenlet on the main thread: a helper made with it would
    # lower the event loop's priority along with the model's.
    pytest.importorskip(mode)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", GREEN_NICE_SCRIPT, mode],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    base = min(19, seen["base"])
    assert seen["main"] == base  # the event loop's thread
    assert seen["started"] and set(seen["started"]) == {min(19, base + 3)}


def test_threads_per_decode_count_the_cpus_the_process_may_use():
    # In a container pinned to 2 CPUs of a 64-core host, os.cpu_count() says 64: 32 threads
    # per decode fighting over 2 cores.
    import os

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    script = "import os; os.sched_setaffinity(0, {0}); from backends.local import usable_cpus; print(usable_cpus())"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
