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
    rng = np.random.default_rng(0)
    for threads in (int(t) for t in args.threads.split(",")):
        model = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads)
        for frames in (int(f) for f in args.frames.split(",")):
            features = (rng.standard_normal((80, frames)) * 0.1).astype(np.float32)
            model.encode(features)  # first call per shape allocates
            wall, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(args.repeat):
                model.encode(features)
            wall = (time.perf_counter() - wall) / args.repeat
            cpu = (cpu_seconds() - cpu) / args.repeat
            print(f"{threads:>8} {frames:>8} {frames / 100:>8.0f} {wall * 1000:>9.0f} {cpu * 1000:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
