"""How many words of a file transcript the alignment collapses, as decoded and as shown.

Transcribes WAVs offline with the local backend (faster-whisper's own loop and VAD, as
``POST /api/transcribe`` does) and counts the words by length, with the times faster-whisper
gives them and with the times a file transcript shows (:func:`server.word_times.shown_segments`).
A zero-length word is no use to a caption, a highlight or a speaking-time figure. The same count
for the streaming pipeline's finals is ``bench.pipeline_sweep``'s ``short_words`` column.

    python -m bench.word_times ~/.cache/livescribe/bench/corpus/en-heldout
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from backends.base import Word

ZERO = 0.02  # seconds: "an instant", what the alignment gives a collapsed word


def count(words: Iterable[Word], short: float) -> dict[str, int]:
    """Words in all, at an instant, and shorter than ``short`` seconds."""
    lengths = [w.end - w.start for w in words]
    return {
        "words": len(lengths),
        "zero_length": sum(n < ZERO for n in lengths),
        "short": sum(n < short for n in lengths),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.word_times", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="WAVs (mono 16 kHz) or folders of them")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--language", default="en")
    args = parser.parse_args(argv)
    files = [f for path in args.files for f in (sorted(path.glob("*.wav")) if path.is_dir() else [path])]

    from backends.base import DecodeOptions
    from backends.local import LocalBackend, LocalBackendOptions
    from bench.pipeline_sweep import as_typed, read_wav
    from server.word_times import MIN_WORD, shown_segments

    backend = LocalBackend(LocalBackendOptions(model=args.model, num_workers=1, cpu_threads=1))
    backend.load()
    decoded: list[Word] = []
    shown: list[Word] = []
    for path in files:
        result = backend.transcribe(read_wav(path), DecodeOptions(language=args.language, word_timestamps=True))
        decoded += [w for s in result.segments for w in s.words]
        shown += [w for s in shown_segments(result.segments, result.duration) for w in s.words]
    print(f"# python -m bench.word_times {' '.join(as_typed(str(f)) for f in args.files)}")
    print(f"# model {args.model}, files: {', '.join(p.stem for p in files)}")
    print(f"{'times':>8}  {'words':>8}  {'zero_length':>12}  {f'under_{MIN_WORD:g}s':>12}")
    for label, words in (("decoded", decoded), ("shown", shown)):
        row = count(words, MIN_WORD)
        print(f"{label:>8}  {row['words']:>8}  {row['zero_length']:>12}  {row['short']:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
