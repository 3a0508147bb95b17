"""Offline sweep of streaming-pipeline settings: WER, decodes and CPU per audio second.

Feeds corpus WAVs through :class:`server.pipeline.StreamingPipeline` in 100 ms chunks as fast as
the model allows (no server, no pacing), so settings can be compared quickly and repeatably.
Latency needs real time: use ``bench.stream_bench`` for that.

    python -m bench.pipeline_sweep --set min_encoder_frames=600,800,1000 --set step=0.5,1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import sys
import time
import wave
from pathlib import Path

import numpy as np

from bench.wer import corpus_wer

DEFAULT_FILES = [
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / f"{name}.wav" for name in ("en-dev-00", "en-dev-01")
]


SHIFT = 0.37  # seconds of leading silence added per --shifts draw


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        if wav.getframerate() != 16000 or wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: expected 16 kHz mono s16")
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def parse_sets(items: list[str]) -> list[dict[str, float]]:
    """``["a=1,2", "b=3"]`` -> every combination as a dict."""
    axes = []
    for item in items:
        name, _, values = item.partition("=")
        axes.append([(name, float(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _with(options, path: list[str], value: float):
    """``options`` with the (possibly nested, ``vad.min_silence``) field set, typed like it."""
    field = {f.name: f for f in dataclasses.fields(options)}[path[0]]
    if len(path) > 1:
        return dataclasses.replace(options, **{path[0]: _with(getattr(options, path[0]), path[1:], value)})
    typed = int(value) if field.type in ("int", int) else bool(value) if field.type in ("bool", bool) else value
    return dataclasses.replace(options, **{path[0]: typed})


def run_one(backend, files: list[Path], overrides: dict[str, float], chunk: float, shifts: int = 1) -> dict:
    from backends.base import Final, StreamOptions
    from server.pipeline import PipelineOptions, StreamingPipeline

    options = PipelineOptions()
    for name, value in overrides.items():
        options = _with(options, name.split("."), value)
    pairs, decodes, audio_seconds = [], 0, 0.0
    started_cpu, started = cpu_seconds(), time.monotonic()
    for path, shift in itertools.product(files, range(shifts)):
        # Leading silence moves every chunk and VAD boundary: another draw of the same speech.
        audio = np.concatenate([np.zeros(int(shift * SHIFT * 16000), np.float32), read_wav(path)])
        reference = json.loads(path.with_suffix(".json").read_text())
        pipeline = StreamingPipeline(backend, StreamOptions(language=reference["language"]), options)
        step = int(chunk * 16000)
        events = []
        for i in range(0, len(audio), step):
            events += pipeline.feed(audio[i : i + step])
        events += pipeline.flush()
        hypothesis = " ".join(e.text for e in events if isinstance(e, Final))
        pairs.append((" ".join(u["text"] for u in reference["utterances"]), hypothesis))
        decodes += pipeline.decodes
        audio_seconds += len(audio) / 16000
    return {
        **overrides,
        "wer": corpus_wer(pairs),
        "decodes_per_min": decodes / audio_seconds * 60,
        "cpu_per_audio_s": (cpu_seconds() - started_cpu) / audio_seconds,
        "wall_s": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT_FILES, help="WAVs with a JSON reference beside")
    parser.add_argument(
        "--set", action="append", default=[], help="PipelineOptions field=v1,v2,... (repeatable; vad.min_silence=...)"
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 threads per decode")
    parser.add_argument("--chunk", type=float, default=0.1, help="seconds fed per call")
    parser.add_argument(
        "--shifts",
        type=int,
        default=1,
        help=f"run each file N times, with 0, {SHIFT}, {2 * SHIFT:.2f} ... s of leading silence: "
        "WER differences of a few words between settings are noise unless they hold across draws",
    )
    args = parser.parse_args(argv)

    from backends.local import LocalBackend, LocalBackendOptions

    backend = LocalBackend(LocalBackendOptions(model=args.model, num_workers=1, cpu_threads=args.threads))
    backend.load()
    print(f"# python -m bench.pipeline_sweep {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(
        f"# model {args.model}, {args.threads} thread(s), {args.chunk * 1000:.0f} ms chunks, files: "
        + ", ".join(p.stem for p in args.files)
    )
    rows = [run_one(backend, args.files, combo, args.chunk, args.shifts) for combo in parse_sets(args.set)]
    columns = list(rows[0])
    print("  ".join(f"{c:>16}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]:>16.3f}" if isinstance(row[c], float) else f"{row[c]:>16}" for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
