"""``python -m server.transcribe FILE...``: transcribe recordings offline with the local model.

The model is loaded once for all files; each file is written as ``<output>/<stem>.<format>``
(``--output -`` prints to stdout). A bad file is reported and skipped: the exit status is 0
when every file was transcribed, 1 when some failed, 2 for a usage or model error.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from backends.base import TASKS, DecodeOptions, StreamOptions
from backends.errors import TranscriptionError
from server.config import DEVICES
from server.subtitles import FORMATS, render, transcript_from_result

logger = logging.getLogger("server.transcribe")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.transcribe",
        description="Transcribe audio or video files (any format FFmpeg decodes) with the local Whisper model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio or video files")
    parser.add_argument(
        "--model", default="tiny.en", help="tiny.en (embedded), base (embedded), a faster-whisper name or a folder"
    )
    parser.add_argument("--language", default="auto", help="language code such as en or fr, or auto (detect)")
    parser.add_argument("--task", default="transcribe", choices=TASKS, help="translate: into English")
    parser.add_argument(
        "--format",
        default="txt",
        help=f"output format: {', '.join(FORMATS)}, a comma-separated list of them, or all",
    )
    parser.add_argument("--output", default=".", help="folder for the output files; - for stdout")
    parser.add_argument("--word-timestamps", action="store_true", help="per-word times (json; finer subtitle cues)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--compute-type", default="auto", help="CTranslate2 compute type (auto: by device)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: all cores")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (there is none when output is not a terminal)"
    )
    return parser


def _formats(value: str) -> list[str]:
    names = list(FORMATS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown format {', '.join(unknown) or value!r}; use {', '.join(FORMATS)} or all")
    return names


def _show_progress(args: argparse.Namespace) -> bool:
    # A bar is for a person watching: not when either stream goes to a file or a pipe.
    return not args.no_progress and sys.stderr.isatty() and sys.stdout.isatty()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        formats = _formats(args.format)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    language = None if args.language == "auto" else args.language.lower()
    to_stdout = args.output == "-"
    output = None if to_stdout else Path(args.output)
    if output is not None and output.exists() and not output.is_dir():
        return _fail(f"--output {output} is not a folder", EXIT_USAGE)

    failed = 0
    files: list[Path] = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            _error(f"{name}: no such file")
            failed += 1
        else:
            files.append(path)
    if not files:
        return EXIT_FAILED
    if output is not None:
        # Two inputs with one name (a/talk.wav, b/talk.mp3) would write one output over the
        # other; say so before a model is loaded or a file written.
        seen: dict[str, Path] = {}
        for path in files:
            if path.stem in seen:
                return _fail(
                    f"{seen[path.stem]} and {path} would both be written as {output / path.stem}.*;"
                    " transcribe them in separate runs with different --output folders",
                    EXIT_USAGE,
                )
            seen[path.stem] = path
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return _fail(f"--output {output}: {exc.strerror or exc}", EXIT_USAGE)

    from backends.local import LocalBackend, LocalBackendOptions

    backend = LocalBackend(
        LocalBackendOptions(
            model=args.model,
            device=args.device,
            compute_type=args.compute_type,
            cpu_threads=args.cpu_threads,
            num_workers=1,
            warmup=False,
        )
    )
    try:
        backend.load()
        backend.validate(StreamOptions(language=language, task=args.task))
    except TranscriptionError as exc:  # unknown model, bad device, unsupported language...
        return _fail(exc.message, EXIT_USAGE)
    options = DecodeOptions(
        language=language, task=args.task, word_timestamps=args.word_timestamps, beam_size=args.beam_size
    )
    progress = _show_progress(args)
    for path in files:
        try:
            transcript = _transcribe(backend, path, options, progress)
        except TranscriptionError as exc:
            _error(f"{path}: {exc.message}")
            failed += 1
            continue
        for fmt in formats:
            text = render(transcript, fmt)
            if to_stdout:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                target = output / f"{path.stem}.{FORMATS[fmt].extension}"
                try:
                    target.write_text(text, encoding="utf-8")
                except OSError as exc:  # a full disk, a read-only file: the other files go on
                    _error(f"{path}: cannot write {target}: {exc.strerror or exc}")
                    failed += 1
                    break
                print(f"{path} -> {target}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _transcribe(backend, path: Path, options: DecodeOptions, progress: bool) -> dict:
    from server.audio import load_audio

    started = time.monotonic()
    audio = load_audio(str(path))
    if audio.size == 0:
        raise TranscriptionError("the file contains no audio samples", code="invalid_audio")
    duration = len(audio) / 16000
    bar = _bar(path, duration) if progress else None
    try:
        result = backend.transcribe(audio, options, progress=bar.advance_to if bar else None)
    finally:
        if bar is not None:
            bar.close()
    logger.info("%s: %.1f s of audio in %.1f s", path, duration, time.monotonic() - started)
    return transcript_from_result(result, words=options.word_timestamps)


class _Bar:
    """A tqdm bar over seconds of audio."""

    def __init__(self, path: Path, duration: float, stream: TextIO) -> None:
        from tqdm import tqdm

        size = shutil.get_terminal_size()
        self._tqdm = tqdm(
            total=round(duration, 1),
            desc=path.name,
            unit="s",
            unit_scale=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]",
            file=stream,
            # A terminal that reports a 0x0 size (a serial console, a fresh pty) would get no
            # bar at all from tqdm; shutil falls back to 80x24 there.
            ncols=size.columns,
            nrows=size.lines,
            leave=True,
        )

    def advance_to(self, seconds: float) -> None:
        target = min(round(seconds, 1), self._tqdm.total)
        if target > self._tqdm.n:
            self._tqdm.update(target - self._tqdm.n)

    def close(self) -> None:
        self._tqdm.close()


def _bar(path: Path, duration: float) -> _Bar:
    return _Bar(path, duration, sys.stderr)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    _error(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
