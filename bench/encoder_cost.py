"""What Whisper's encoder costs by input length (the lever behind the reduced encoder context).

Whisper pads every input to 3000 mel frames (30 s); CTranslate2 accepts fewer. This times the
encoder alone on N frames, CPU seconds and wall seconds per call.

    python -m bench.encoder_cost --frames 3000,2000,1500,1000 --threads 1,2
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def encoder_ms(model: object, frames: int, repeat: int = 5) -> tuple[float, float]:
    """Wall and CPU milliseconds of one encoder call of ``model`` (a faster-whisper
    ``WhisperModel``) on ``frames`` mel frames."""
    features = (np.random.default_rng(0).standard_normal((80, frames)) * 0.1).astype(np.float32)
    model.encode(features)  # first call per shape allocates
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(repeat):
        model.encode(features)
    return (time.perf_counter() - wall) / repeat * 1000, (cpu_seconds() - cpu) / repeat * 1000


def yardstick() -> str:
    """This machine's speed right now, for reading benchmark figures: tiny.en's encoder on
    1000 frames (10 s) on one thread. Shared VMs drift by 1.5x within a day; compare runs
    taken at similar values."""
    try:
        from faster_whisper import WhisperModel

        from backends.errors import TranscriptionError
        from backends.models import resolve_model
    except ImportError as exc:  # a yardstick must not cost the benchmark it annotates
        return f"not measured ({exc})"
    try:
        model = WhisperModel(resolve_model("tiny.en").path, device="cpu", compute_type="int8", cpu_threads=1)
        wall, _ = encoder_ms(model, 1000)
    except (TranscriptionError, OSError, RuntimeError, ValueError) as exc:
        return f"not measured ({exc})"
    return f"tiny.en encoder, 1000 frames on 1 thread: {wall:.0f} ms (python -m bench.encoder_cost)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoder_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--frames", default="3000,2000,1500,1000")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from faster_whisper import WhisperModel

    from backends.models import resolve_model

    path = resolve_model(args.model).path
    print(f"# python -m bench.encoder_cost {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"{'threads':>8} {'frames':>8} {'seconds':>8} {'wall ms':>9} {'cpu ms':>8}")
    for threads in (int(t) for t in args.threads.split(",")):
        model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads)
        for frames in (int(f) for f in args.frames.split(",")):
            wall, cpu = encoder_ms(model, frames, args.repeat)
            print(f"{threads:>8} {frames:>8} {frames / 100:>8.0f} {wall:>9.0f} {cpu:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
