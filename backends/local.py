"""Local backend: faster-whisper (CTranslate2) on NVIDIA CUDA, AMD ROCm or CPU.

One model instance is loaded at startup and shared by every session; CTranslate2 runs up to
``num_workers`` decodes in parallel when several threads call it. ``faster_whisper`` and
``ctranslate2`` are imported lazily so ``import backends`` needs neither.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import (
    SAMPLE_RATE,
    TASKS,
    BackendInfo,
    DecodeOptions,
    DecoderBackend,
    DecodeResult,
    Segment,
    Word,
    word_key,
)
from backends.errors import BackendFailure, ConfigurationError, ModelNotFound
from backends.models import resolve_model
from backends.native import PriorityGate, native_thread_api

if TYPE_CHECKING:  # pragma: no cover
    from faster_whisper import WhisperModel

logger = logging.getLogger(__name__)

# Whisper's fixed input: 30 s of 10 ms mel frames.
FULL_FRAMES = 3000
# How often offline transcription re-checks whether live decodes are still running.
LIVE_POLL_SECONDS = 0.005
# Frames of zero-padding below which a short window makes the decoder loop (measured: a
# 1.5 s phrase padded to 2x its length repeated itself; padded to 10 s it did not).
MIN_ENCODER_FRAMES = 1000
# A bound on the tokens a decode may write per second of audio, to stop decoder loops early.
# Speech runs at 3-5 tokens a second (words, punctuation, timestamps); on a 0.5 s window tiny.en
# sometimes loops ("Press. Press. Press. ...") to Whisper's 448-token limit, which took 1.2-1.6 s
# where the decode should take 0.16 s, and delayed every final after it.
MAX_TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 16
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class LocalBackendOptions:
    model: str = "tiny.en"
    device: str = "auto"  # auto | cpu | cuda
    compute_type: str = "auto"
    cpu_threads: int = 0  # 0: all cores divided among workers
    num_workers: int = 2
    download_root: str | None = None
    warmup: bool = True
    # Nice value of the threads that run the model (Linux; 0: as the caller). The socket
    # loop and whatever else shares the machine then get a core first when all are busy.
    nice: int = 0


def _with_nice(nice: int, factory: Callable[[], Any]) -> Any:
    """``factory()`` run on a helper thread whose nice value is raised by ``nice``, so the
    threads it starts (CTranslate2's workers) inherit it.

    Linux keeps a nice value per thread and a new thread inherits its creator's; elsewhere
    ``setpriority`` would lower the whole process, so the factory runs as it is. An
    unprivileged thread cannot lower its nice value again, hence the throwaway thread.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return factory()
    outcome: dict[str, Any] = {}
    # A native thread: under gevent's monkey patching ``threading.Thread`` is a greenlet on
    # the main thread, which would lower the event loop's priority with the model's.
    start_new_thread, allocate_lock = native_thread_api()
    done = allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError as exc:  # a sandbox may forbid it: the model still loads
            logger.warning("could not lower the model threads' priority: %s", exc)
        try:
            outcome["value"] = factory()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc
        finally:
            done.release()

    start_new_thread(run, ())
    done.acquire()  # start-up only: blocking here is what loading the model does anyway
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def encoder_frames_for(num_samples: int, factor: float = 1.5, minimum: int = MIN_ENCODER_FRAMES) -> int:
    """Encoder frames to pad a window of ``num_samples`` to: ``factor`` times its length,
    at least ``minimum``, at most Whisper's 30 s, rounded up to 200 frames (few shapes)."""
    frames = int(num_samples // 160 * factor)
    frames = max(minimum, min(FULL_FRAMES, frames))
    return min(FULL_FRAMES, -(-frames // 200) * 200)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's cpuset), then
    a cgroup v2 quota (``docker --cpus``), not the host's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def select_device(requested: str) -> str:
    """``auto`` picks a GPU when CTranslate2 itself sees one (CUDA or ROCm builds), else CPU.

    torch is deliberately not consulted: it may see GPUs a CPU-only CTranslate2 cannot use.
    """
    import ctranslate2

    if requested != "auto":
        if requested == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise ConfigurationError(
                "device 'cuda' requested but CTranslate2 sees no GPU: install a CUDA (or ROCm)"
                " build of ctranslate2 and the GPU driver, or use --device cpu",
                code="device_unavailable",
            )
        return requested
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def select_compute_type(device: str, requested: str) -> str:
    """``auto``: float16 on GPU, int8 on CPU; falls back to what the device supports."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device)
    if requested != "auto":
        if requested not in supported:
            raise ConfigurationError(
                f"compute type '{requested}' is not supported on {device}; supported: {', '.join(sorted(supported))}",
                code="compute_type_unsupported",
            )
        return requested
    for candidate in ("float16", "int8_float16", "float32") if device == "cuda" else ("int8", "float32"):
        if candidate in supported:
            return candidate
    return "default"


def describe_device(device: str) -> str:
    """A human name for the device (GPU model or CPU), best effort and never fatal."""
    if device == "cuda":
        for cmd in (
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
            ["rocm-smi", "--showproductname", "--csv"],
        ):
            if shutil.which(cmd[0]):
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                except (OSError, subprocess.SubprocessError):
                    continue
                lines = [line.strip() for line in out.splitlines() if line.strip()]
                if lines:
                    return lines[-1].split(",")[-1].strip() or "GPU"
        return "GPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _after_key_chars(text: str, count: int) -> str:
    """``text`` after its first ``count`` characters that :func:`word_key` keeps; "" if no
    such character follows ("touch" forced, " touchtone" decoded: "tone")."""
    seen = 0
    for i, char in enumerate(text):
        if seen >= count and word_key(text[i:]):
            return text[i:]
        seen += bool(word_key(char))
    return ""


class LocalBackend(DecoderBackend):
    """faster-whisper, loaded once and shared; decodes are thread-safe."""

    name = "local"

    def __init__(self, options: LocalBackendOptions) -> None:
        self.options = options
        self._model: WhisperModel | None = None
        self._model_label = options.model
        self._device = "cpu"
        self._device_name: str | None = None
        self._compute_type: str | None = None
        self._languages: tuple[str, ...] = ()
        self._multilingual = False
        self._ready = threading.Event()
        # Called after every successful ``decode`` with (seconds of audio, seconds it took):
        # the server's metrics. An observer must be cheap and must not raise.
        self.observers: list[Callable[[float, float], None]] = []
        # One token per ``decode`` in progress. A deque because its append/pop are atomic
        # across native threads in every async mode (a patched lock may not be).
        self._live_decodes: deque[None] = deque()
        self._gate = PriorityGate(options.num_workers)

    # --- lifecycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Resolve, load and warm up the model. Raises :class:`ConfigurationError`."""
        from faster_whisper import WhisperModel

        started = time.monotonic()
        resolved = resolve_model(self.options.model, self.options.download_root)
        self._model_label = resolved.label
        self._device = select_device(self.options.device)
        self._compute_type = select_compute_type(self._device, self.options.compute_type)
        workers = max(1, self.options.num_workers)
        threads = self.options.cpu_threads or max(1, usable_cpus() // workers)
        try:
            self._model = _with_nice(
                self.options.nice,
                lambda: WhisperModel(
                    resolved.path,
                    device=self._device,
                    compute_type=self._compute_type,
                    cpu_threads=threads,
                    num_workers=workers,
                ),
            )
        except Exception as exc:
            raise ConfigurationError(
                f"could not load model '{resolved.label}' from {resolved.path} on"
                f" {self._device}/{self._compute_type}: {exc}",
                code="model_load_failed",
            ) from exc
        self._multilingual = bool(self._model.model.is_multilingual)
        self._languages = tuple(self._model.supported_languages)
        self._device_name = describe_device(self._device)
        if self.options.warmup:
            try:
                self._warm_up()
            except BackendFailure as exc:
                # CTranslate2 sees a GPU without the CUDA libraries it needs to run on it
                # (cuBLAS, cuDNN): the model loads, and the first decode fails.
                raise ConfigurationError(
                    f"model '{resolved.label}' loaded on {self._device} but could not run there: {exc.message}"
                    + (
                        "; install the CUDA 12 libraries (README, GPU notes) or start with --device cpu"
                        if self._device == "cuda"
                        else ""
                    ),
                    code="model_load_failed",
                ) from exc
        self._ready.set()
        logger.info(
            "model %s loaded on %s (%s, %s, %d worker(s) x %d thread(s)) in %.1f s",
            self._model_label,
            self._device,
            self._device_name,
            self._compute_type,
            workers,
            threads,
            time.monotonic() - started,
        )

    def _warm_up(self) -> None:
        # The first CTranslate2 call per shape allocates and JIT-selects kernels; pay it now
        # rather than in the first user's first partial.
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE * 2) * 0.01).astype(np.float32)
        language = None if self._multilingual else "en"
        self.decode(noise, DecodeOptions(language=language, encoder_frames=MIN_ENCODER_FRAMES))

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def model(self) -> WhisperModel:
        if self._model is None:
            raise BackendFailure("the local model is not loaded", code="backend_unavailable")
        return self._model

    def info(self) -> BackendInfo:
        if self._model is None:
            return BackendInfo(name=self.name, available=False, reason="model not loaded", model=self._model_label)
        return BackendInfo(
            name=self.name,
            available=True,
            model=self._model_label,
            device=self._device,
            device_name=self._device_name,
            compute_type=self._compute_type,
            multilingual=self._multilingual,
            languages=self._languages,
            tasks=TASKS if self._multilingual else ("transcribe",),
        )

    def close(self) -> None:
        self._model = None
        self._ready.clear()

    # --- decoding ----------------------------------------------------------------------

    def decode(self, audio: np.ndarray, options: DecodeOptions) -> DecodeResult:
        """Decode one window (<= 30 s) with word timestamps, without temperature fallback.

        Streaming calls this every step, so it avoids faster-whisper's ``transcribe`` loop:
        the encoder input is padded to ``options.encoder_frames`` instead of 30 s, and the
        quality gates (no-speech, log-prob, compression) are left to the caller.

        Live sessions call this; while any call is in progress :meth:`transcribe` (files)
        pauses between its windows, so live steps go first. At most ``num_workers`` calls
        decode at once (the model's own parallelism); of the others, ``options.urgent`` ones
        go first.
        """
        self._live_decodes.append(None)
        try:
            with self._gate.slot(options.urgent):
                started = time.perf_counter()
                result = self._decode(audio, options)
                elapsed = time.perf_counter() - started
        finally:
            self._live_decodes.pop()
        for observer in self.observers:
            try:
                observer(result.duration, elapsed)
            except Exception:
                logger.exception("decode observer failed")
        return result

    @property
    def live_decodes(self) -> int:
        """Live ``decode`` calls in progress right now."""
        return len(self._live_decodes)

    def _decode(self, audio: np.ndarray, options: DecodeOptions) -> DecodeResult:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio

        model = self.model
        try:
            features = model.feature_extractor(audio)
            content_frames = min(features.shape[-1] - 1, FULL_FRAMES)
            target = FULL_FRAMES if options.encoder_frames is None else options.encoder_frames
            target = max(content_frames, min(FULL_FRAMES, target))
            padded = np.zeros((features.shape[0], target), dtype=np.float32)
            padded[:, :content_frames] = features[:, :content_frames]
            encoder_output = model.encode(padded)

            language, language_probability = options.language, 1.0
            language_probs: tuple[tuple[str, float], ...] = ()
            if not self._multilingual:
                language = "en"
            elif language is None:
                (ranked,) = model.model.detect_language(encoder_output)
                language_probs = tuple((token[2:-2], float(p)) for token, p in ranked[:5])
                language, language_probability = language_probs[0]

            tokenizer = Tokenizer(model.hf_tokenizer, self._multilingual, task=options.task, language=language)
            previous = tokenizer.encode(" " + options.prompt.strip()) if options.prompt else []
            # Keep the prompt to the last 200 tokens: Whisper's context is 448 tokens and
            # the most recent text is what helps.
            # After a forced prefix, timestamp mode tends to close the prefix as one segment
            # and stop (a 6 s prefix ended "<|5.52|>" and nothing of the 2.5 s after it was
            # written; timestamps inside the prefix made it worse); text mode continues. Word
            # times come from the alignment either way.
            prefix = "".join(w.text for w in options.prefix).strip() or None
            without_timestamps = prefix is not None
            prompt = model.get_prompt(tokenizer, previous[-200:], without_timestamps=without_timestamps, prefix=prefix)
            budget = MIN_NEW_TOKENS + int(MAX_TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE)
            max_new_tokens = max(1, min(budget, model.max_length - len(prompt)))
            transcription_options = self._transcription_options(tokenizer, options, without_timestamps, max_new_tokens)
            result, avg_logprob, _temperature, compression_ratio = model.generate_with_fallback(
                encoder_output, prompt, tokenizer, transcription_options
            )
            tokens = result.sequences_ids[0]
            duration = content_frames * model.feature_extractor.time_per_frame
            raw_segments, _, _ = model._split_segments_by_timestamps(
                tokenizer, tokens, 0.0, content_frames, duration, 0
            )
            raw_segments = [s for s in raw_segments if any(t < tokenizer.eot for t in s["tokens"])]
            if options.word_timestamps and raw_segments:
                model.add_word_timestamps(
                    [raw_segments],
                    tokenizer,
                    encoder_output,
                    content_frames,
                    PREPEND_PUNCTUATIONS,
                    APPEND_PUNCTUATIONS,
                    0.0,
                )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendFailure(f"decoding failed: {exc}") from exc

        # CTranslate2 returns the forced prefix as part of the sequence (which is what lets
        # the word alignment see it): leave its words out of the result.
        skip = sum(len(word_key(w.text)) for w in options.prefix)
        segments = []
        for raw in raw_segments:
            text = tokenizer.decode([t for t in raw["tokens"] if t < tokenizer.eot])
            kept = []
            for w in raw.get("words", ()):
                if skip > 0:
                    rest = _after_key_chars(w["word"], skip)
                    skip -= len(word_key(w["word"]))
                    if rest:
                        # The decoder went on with the last forced word ("touch" + "tone":
                        # " touchtone"): its continuation is new speech, not prefix.
                        kept.append({**w, "word": rest})
                    continue
                kept.append(w)
            if kept != list(raw.get("words", ())):
                text = "".join(w["word"] for w in kept)
                if not kept:
                    continue
            words = tuple(
                Word(text=w["word"], start=float(w["start"]), end=float(w["end"]), probability=float(w["probability"]))
                for w in kept
            )
            segments.append(
                Segment(
                    text=text,
                    start=float(raw["start"]),
                    end=float(raw["end"]),
                    words=words,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=float(result.no_speech_prob),
                    compression_ratio=float(get_compression_ratio(text)) if text else compression_ratio,
                )
            )
        return DecodeResult(
            segments=tuple(segments),
            language=language or "en",
            language_probability=float(language_probability),
            duration=float(len(audio) / SAMPLE_RATE),
            language_probs=language_probs,
        )

    def _transcription_options(
        self, tokenizer: Any, options: DecodeOptions, without_timestamps: bool, max_new_tokens: int | None
    ) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=options.beam_size,
            best_of=1,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=None,
            no_speech_threshold=None,
            compression_ratio_threshold=None,
            condition_on_previous_text=True,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0],
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=without_timestamps,
            max_initial_timestamp=1.0,
            word_timestamps=options.word_timestamps,
            prepend_punctuations=PREPEND_PUNCTUATIONS,
            append_punctuations=APPEND_PUNCTUATIONS,
            multilingual=False,
            max_new_tokens=max_new_tokens,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )

    def transcribe(
        self,
        audio: np.ndarray,
        options: DecodeOptions,
        progress: Callable[[float], None] | None = None,
    ) -> DecodeResult:
        """Offline transcription of any length with faster-whisper's own loop and VAD.

        ``progress(seconds)`` is called after each segment with the audio time reached. Between
        segments (faster-whisper decodes lazily, one 30 s window at a time) this waits while
        live :meth:`decode` calls are in progress: a file never delays a live step by more than
        the one window it is decoding.
        """
        model = self.model
        language = options.language if self._multilingual else "en"
        segments: list[Segment] = []
        try:
            raw_segments, info = model.transcribe(
                audio,
                language=language,
                task=options.task,
                beam_size=options.beam_size,
                word_timestamps=options.word_timestamps,
                vad_filter=True,
                condition_on_previous_text=False,
                initial_prompt=options.prompt,
            )
            iterator = iter(raw_segments)
            while True:
                self._yield_to_live()
                s = next(iterator, None)
                if s is None:
                    break
                segments.append(
                    Segment(
                        text=s.text,
                        start=float(s.start),
                        end=float(s.end),
                        words=tuple(
                            Word(text=w.word, start=float(w.start), end=float(w.end), probability=float(w.probability))
                            for w in (s.words or ())
                        ),
                        avg_logprob=float(s.avg_logprob),
                        no_speech_prob=float(s.no_speech_prob),
                        compression_ratio=float(s.compression_ratio),
                    )
                )
                if progress is not None:
                    progress(float(s.end))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise BackendFailure(f"transcription failed: {exc}") from exc
        if progress is not None:
            progress(float(info.duration))
        return DecodeResult(
            segments=tuple(segments),
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
        )

    def _yield_to_live(self) -> None:
        # Polling rather than a condition variable: it works the same on native threads
        # under gevent/eventlet monkey patching, and costs nothing when no session is live.
        while self._live_decodes:
            time.sleep(LIVE_POLL_SECONDS)


__all__ = ["LocalBackend", "LocalBackendOptions", "ModelNotFound", "encoder_frames_for"]
