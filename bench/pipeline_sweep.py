"""Offline sweep of streaming-pipeline settings: WER, decodes and CPU per audio second.

Feeds corpus WAVs through :class:`server.pipeline.StreamingPipeline` in 100 ms chunks as fast as
the model allows (no server, no pacing), so settings can be compared quickly and repeatably.

Latency is simulated for one stream on the same thread: chunk k exists at ``(k+1) * chunk``
seconds, a feed starts once its audio exists and the previous feed is done, takes the wall time
it really took, and whatever piled up meanwhile is fed as one batch, as a server session's
worker does. Its events arrive when the feed returns; final latency (per reference phrase,
``final_lat_*``, and per final word, ``word_final_*``) and first-partial latency are then
computed as ``bench.stream_bench`` does (which also counts the network and the server, and
several streams).

With several settings, each row also gets its WER ratio to the first row's (``vs_first``) and
that ratio's 95% interval over the reference utterances (``vs_first_low``, ``vs_first_high``):
an interval that holds 1 means the files cannot tell the two settings apart. The interval
resamples utterances, not runs: identical runs differ by a few words (the simulated clock
follows the measured decode times), so confirm a winner in another run, with ``--shifts``.
``--clock model`` removes that spread: each decode then takes the time a cost model fitted on
this machine gives it (:class:`DecodeCost`), so a run repeats word for word and two settings
differ only by what they change (the latency columns are then modeled; CPU is still measured).

    python -m bench.pipeline_sweep --set min_encoder_frames=600,800,1000 --set step=0.5,1.0
    python -m bench.pipeline_sweep DIR --offline --clock model --shifts 3 --set end_probe=0.1,0.2
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import itertools
import json
import os
import pstats
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.encoder_cost import cpu_seconds, yardstick
from bench.wer import align, corpus_wer, normalize, ratio_interval_by_utterance, utterance_errors

DEFAULT_FILES = [
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / f"{name}.wav" for name in ("en-dev-00", "en-dev-01")
]


SHIFT = 0.37  # seconds of leading silence added per --shifts draw


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


@dataclass(frozen=True)
class DecodeCost:
    """A decode's wall time, modeled: tiny.en int8 on one thread of the 2-core AMD EPYC VM.

    A least-squares fit (``--fit-cost``) to 277 decodes of four held-out streams (2026-12-03,
    yardstick 63-78 ms; mean 195 ms, residual sd 25 ms): the encoder (quadratic in its frames), the alignment
    (audio), forced prefix tokens (a decoder step each) and generated tokens (characters stand
    in for tokens). Only relative costs matter for comparing settings: the schedule then
    depends on the audio and the setting, not on the machine's load. A refit an hour later
    (``python -m bench.pipeline_sweep DIR/en-heldout-0[0-3].wav --fit-cost``): mean 206 ms,
    residual 22 ms, the two frame terms traded against each other (most decodes pad to
    1000-1400 frames, where they are nearly collinear); these coefficients stay, so that runs
    stay comparable.
    """

    base: float = -0.017
    per_kframe: float = 0.098  # per 1000 encoder frames
    per_kframe2: float = 0.022  # per (1000 frames) squared
    per_audio_second: float = 0.0076
    per_prefix_char: float = 0.00032
    per_output_char: float = 0.00076

    def __call__(self, audio_seconds: float, frames: int, prefix_chars: int, output_chars: int) -> float:
        k = frames / 1000
        cost = self.base + self.per_kframe * k + self.per_kframe2 * k * k
        cost += self.per_audio_second * audio_seconds
        cost += self.per_prefix_char * prefix_chars + self.per_output_char * output_chars
        return max(0.01, cost)


def fit_cost(samples: list[tuple[float, int, int, int, float]]) -> tuple[DecodeCost, float]:
    """Least squares of measured decode times on :class:`DecodeCost`'s terms; ``samples``:
    (audio seconds, encoder frames, prefix characters, output characters, seconds) per decode.
    Returns the model and the residuals' standard deviation."""
    audio, frames, prefix, output, elapsed = np.array(samples, dtype=float).T
    k = frames / 1000
    terms = np.column_stack([np.ones_like(k), k, k * k, audio, prefix, output])
    coef, *_ = np.linalg.lstsq(terms, elapsed, rcond=None)
    return DecodeCost(*(float(c) for c in coef)), float(np.std(elapsed - terms @ coef))


class ModeledBackend:
    """A decoder whose decodes advance a virtual clock by their modeled cost (``--clock model``);
    call it for the time. The decodes themselves are real, and ``samples`` keeps each one's
    terms and wall time (for :func:`fit_cost`)."""

    def __init__(self, backend, cost: DecodeCost | None = None) -> None:
        self._backend = backend
        self._cost = cost or DecodeCost()
        self.now = 0.0
        self.samples: list[tuple[float, int, int, int, float]] = []

    def __call__(self) -> float:
        return self.now

    def info(self):
        return self._backend.info()

    def decode(self, audio: np.ndarray, options):
        from backends.local import FULL_FRAMES

        started = time.perf_counter()
        result = self._backend.decode(audio, options)
        elapsed = time.perf_counter() - started
        # The encoder input as the backend pads it: at least the audio's 10 ms frames.
        frames = max(len(audio) // 160, min(FULL_FRAMES, options.encoder_frames or FULL_FRAMES))
        prefix = sum(len(w.text) for w in options.prefix)
        output = sum(len(w.text) for segment in result.segments for w in segment.words)
        self.now += self._cost(len(audio) / 16000, frames, prefix, output)
        self.samples.append((len(audio) / 16000, frames, prefix, output, elapsed))
        return result


def simulate(
    pipeline, audio: np.ndarray, chunk: float, clock: Callable[[], float] = time.perf_counter
) -> list[tuple[float, object]]:
    """Feed ``audio`` in ``chunk``-second pieces on a simulated clock (module docstring):
    the events with their arrival times. ``clock`` measures the processing time (tests pass
    one that counts only their decoders' declared cost)."""
    step = int(chunk * 16000)
    count = -(-len(audio) // step)
    events: list[tuple[float, object]] = []
    now, k = 0.0, 0
    while k < count:
        now = max(now, (k + 1) * chunk)
        # Everything recorded by now goes in one batch, as a session worker drains its queue.
        last = min(count, max(k + 1, int(now / chunk + 1e-9)))
        started = clock()
        batch = pipeline.feed(audio[k * step : last * step])
        now += clock() - started
        events += [(now, e) for e in batch]
        k = last
    started = clock()
    batch = pipeline.flush()
    now += clock() - started
    return events + [(now, e) for e in batch]


def latencies(
    events: list[tuple[float, object]], utterances: list[dict], shift: float
) -> tuple[list, list, list[float]]:
    """Final and first-partial latency per reference utterance (None: never shown), and final
    latency per final word (``stream_bench.word_final_latencies``)."""
    from backends.base import Final, Partial
    from bench.stream_bench import (
        SessionRecord,
        Utterance,
        final_latencies,
        first_partial_latencies,
        word_final_latencies,
    )
    from server.protocol import final_payload, partial_payload

    # The events as a client would have received them.
    record = SessionRecord(stream_id="", client=0, duration=0.0)
    for arrival, event in events:
        if isinstance(event, Final):
            record.finals.append((arrival, final_payload("", 0, event, 0.0)))
        elif isinstance(event, Partial):
            record.partials.append((arrival, partial_payload("", event, 0.0)))
    utts = [Utterance(u["start"] + shift, u["end"] + shift, u["text"]) for u in utterances]
    # Word times are in the shifted audio already: only the references need the shift.
    return final_latencies(record, utts), first_partial_latencies(record, utts), word_final_latencies(record)


def run_one(
    backend,
    files: list[Path],
    overrides: dict[str, float],
    chunk: float,
    shifts: int = 1,
    texts: dict[str, str] | None = None,
    draws: list[tuple[str, str]] | None = None,
    clock: str = "measured",
) -> dict:
    """One setting's row; ``texts`` (if given) receives each file's joined finals by stem
    (the first draw's, with --shifts), ``draws`` (if given) every draw's as (stem, finals);
    ``clock``: "measured" (decodes take their wall time) or "model" (:class:`DecodeCost`)."""
    from backends.base import Final, StreamOptions
    from bench.stream_bench import percentile
    from server.pipeline import PipelineOptions, StreamingPipeline
    from server.protocol import join_finals
    from server.word_times import MIN_WORD

    options = PipelineOptions()
    for name, value in overrides.items():
        options = _with(options, name.split("."), value)
    pairs, decodes, audio_seconds, short_words, no_final, no_partial = [], 0, 0.0, 0, 0, 0
    final_lat: list[float] = []
    word_final_lat: list[float] = []
    first_lat: list[float] = []
    started_cpu, started = cpu_seconds(), time.monotonic()
    for path, shift in itertools.product(files, range(shifts)):
        # Leading silence moves every chunk and VAD boundary: another draw of the same speech.
        audio = np.concatenate([np.zeros(int(shift * SHIFT * 16000), np.float32), read_wav(path)])
        reference = json.loads(path.with_suffix(".json").read_text())
        decoder = ModeledBackend(backend) if clock == "model" else backend
        pipeline = StreamingPipeline(decoder, StreamOptions(language=reference["language"]), options)
        events = simulate(pipeline, audio, chunk, clock=decoder if clock == "model" else time.perf_counter)
        final_events = [e for _, e in events if isinstance(e, Final)]
        hypothesis = join_finals((e.text, e.joins_previous) for e in final_events)
        # Words a caption or a highlight can hardly use (docs/PIPELINE.md, "Word times a
        # caption can use").
        short_words += sum(w.end - w.start < MIN_WORD for e in final_events for w in e.words)
        pairs.append((" ".join(u["text"] for u in reference["utterances"]), hypothesis))
        if texts is not None and shift == 0:
            texts[path.stem] = hypothesis
        if draws is not None:
            draws.append((path.stem, hypothesis))
        finals, firsts, words = latencies(events, reference["utterances"], shift * SHIFT)
        final_lat += [v for v in finals if v is not None]
        word_final_lat += words
        first_lat += [v for v in firsts if v is not None]
        # Left out of the latency percentiles above: counted here, so that a setting that
        # finalises fewer utterances cannot look faster for it.
        no_final += sum(v is None for v in finals)
        no_partial += sum(v is None for v in firsts)
        decodes += pipeline.decodes
        audio_seconds += len(audio) / 16000
    return {
        **overrides,
        "wer": corpus_wer(pairs),
        "final_lat_med": percentile(final_lat, 50),
        "final_lat_p90": percentile(final_lat, 90),
        "word_final_med": percentile(word_final_lat, 50),
        "word_final_p90": percentile(word_final_lat, 90),
        "first_partial_med": percentile(first_lat, 50),
        "decodes_per_min": decodes / audio_seconds * 60,
        "cpu_per_audio_s": (cpu_seconds() - started_cpu) / audio_seconds,
        "short_words": short_words,
        "no_final": no_final,  # utterances without a final (not in final_lat_*)
        "no_partial": no_partial,  # utterances without a partial (not in first_partial_med)
        "wall_s": time.monotonic() - started,
    }


def offline_texts(model: str, files: list[Path]) -> dict[str, str]:
    """Offline faster-whisper's text per file stem (stream_bench's reference, cached on disk)."""
    from bench.stream_bench import load_stream, offline_transcripts

    streams = [load_stream(path) for path in files]
    texts = offline_transcripts(model, streams)
    return {path.stem: texts[stream.stream_id] for path, stream in zip(files, streams, strict=True)}


def ratio_bounds(
    draws: list[tuple[str, str]], baseline: list[tuple[str, str]], utterances: dict[str, list[str]]
) -> tuple[float, float]:
    """95% interval of the WER ratio of ``draws`` to ``baseline`` ((stem, joined finals) each,
    the same files in the same order), resampling reference utterances (the --shifts draws of
    one utterance count once)."""

    def paired(draw: tuple[str, str], base: tuple[str, str]) -> tuple[str, list[int], list[int]]:
        assert draw[0] == base[0], "draws and baseline must list the same files in the same order"
        texts = utterances[draw[0]]
        return draw[0], utterance_errors(texts, draw[1]), utterance_errors(texts, base[1])

    return ratio_interval_by_utterance(paired(d, b) for d, b in zip(draws, baseline, strict=True))


def references(files: list[Path]) -> dict[str, str]:
    """Each file's reference text by stem."""
    return {stem: " ".join(texts) for stem, texts in utterance_texts(files).items()}


def utterance_texts(files: list[Path]) -> dict[str, list[str]]:
    """Each file's reference utterances by stem."""
    out = {}
    for path in files:
        reference = json.loads(path.with_suffix(".json").read_text())
        out[path.stem] = [u["text"] for u in reference["utterances"]]
    return out


def error_list(reference: str, hypothesis: str) -> list[str]:
    """A hypothesis' word errors, in order: ``ref>hyp`` substituted, ``-ref`` missing,
    ``+hyp`` inserted (normalised words, as the WER counts them)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    shown = []
    for op, i, j in align(ref, hyp):
        if op == "S":
            shown.append(f"{ref[i]}>{hyp[j]}")
        elif op == "D":
            shown.append(f"-{ref[i]}")
        elif op == "I":
            shown.append(f"+{hyp[j]}")
    return shown


def print_errors(label: str, refs: dict[str, str], texts: dict[str, str]) -> None:
    print(f"# errors: {label}")
    for stem, reference in refs.items():
        errors = error_list(reference, texts[stem])
        print(f"{stem:>20} {len(errors):>3}  {' '.join(errors) or '(none)'}")


def as_typed(arg: str) -> str:
    """A file argument as the command line would be typed here: relative, or from ``~``."""
    path = Path(arg).resolve()
    if not path.exists():
        return arg
    relative = os.path.relpath(path)
    if not relative.startswith(".."):
        return relative
    return f"~/{path.relative_to(Path.home())}" if path.is_relative_to(Path.home()) else arg


def print_fit(backend, files: list[Path], chunk: float) -> int:
    """``--fit-cost``: fit :class:`DecodeCost` to this machine's decodes of ``files``."""
    from backends.base import StreamOptions
    from server.pipeline import StreamingPipeline

    decoder = ModeledBackend(backend)
    for path in files:
        language = json.loads(path.with_suffix(".json").read_text())["language"]
        simulate(StreamingPipeline(decoder, StreamOptions(language=language)), read_wav(path), chunk, clock=decoder)
    cost, residual = fit_cost(decoder.samples)
    mean = sum(s[-1] for s in decoder.samples) / len(decoder.samples)
    print(f"# {len(decoder.samples)} decodes, mean {mean * 1000:.0f} ms, residual sd {residual * 1000:.0f} ms")
    print(cost)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="*", type=Path, default=DEFAULT_FILES, help="WAVs with a JSON reference beside, or folders"
    )
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
    parser.add_argument(
        "--clock",
        choices=("measured", "model"),
        default="measured",
        help="measured: each decode takes its wall time on the simulated clock (runs differ by a few "
        "words with the machine's speed); model: a cost fitted on this machine (DecodeCost), so a "
        "run repeats exactly and settings compare without that spread (latency columns modeled)",
    )
    parser.add_argument(
        "--fit-cost",
        action="store_true",
        help="instead of a sweep: run the default settings over the files, time every decode and "
        "print the least-squares DecodeCost for --clock model on this machine",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="also the offline WER (cached), each row's ratio to it and the ratio's 95%% interval "
        "(ratio_low, ratio_high: a paired bootstrap over the reference utterances)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="profile the runs (cProfile) and print the N functions with the most own time: where "
        "the CPU goes (CTranslate2's encode, generate and align are single native calls)",
    )
    parser.add_argument(
        "--errors",
        action="store_true",
        help="list each file's word errors per setting (and offline's, with --offline): which words "
        "a setting gets wrong, not only how many",
    )
    args = parser.parse_args(argv)
    args.files = [f for path in args.files for f in (sorted(path.glob("*.wav")) if path.is_dir() else [path])]

    from backends.local import LocalBackend, LocalBackendOptions

    backend = LocalBackend(LocalBackendOptions(model=args.model, num_workers=1, cpu_threads=args.threads))
    backend.load()
    shown = [as_typed(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    print(f"# python -m bench.pipeline_sweep {' '.join(shown)}".rstrip())
    print(
        f"# model {args.model}, {args.threads} thread(s), {args.chunk * 1000:.0f} ms chunks, files: "
        + ", ".join(p.stem for p in args.files)
    )
    print(f"# speed: {yardstick()}; clock: {args.clock}")
    if args.fit_cost:
        return print_fit(backend, args.files, args.chunk)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    combos = parse_sets(args.set)
    texts: list[dict[str, str]] = [{} for _ in combos]
    draws: list[list[tuple[str, str]]] = [[] for _ in combos]
    rows = [
        run_one(backend, args.files, combo, args.chunk, args.shifts, out, drawn, args.clock)
        for combo, out, drawn in zip(combos, texts, draws, strict=True)
    ]
    if profiler:
        profiler.disable()
    refs = references(args.files)
    utterances = utterance_texts(args.files)
    if args.offline:
        offline_by_file = offline_texts(args.model, args.files)
        offline = corpus_wer([(refs[stem], offline_by_file[stem]) for stem in refs])
        print(f"# offline faster-whisper on the same files (beam 1, VAD filter): WER {offline:.3f}")
        for row, drawn in zip(rows, draws, strict=True):
            row["wer_ratio"] = row["wer"] / offline if offline else float("nan")
            offline_draws = [(stem, offline_by_file[stem]) for stem, _ in drawn]
            row["ratio_low"], row["ratio_high"] = ratio_bounds(drawn, offline_draws, utterances)
    if len(rows) > 1:
        # Whether a setting beats the first one or only drew other words: the same interval,
        # paired on the same draws of the same utterances.
        for row, drawn in zip(rows, draws, strict=True):
            row["vs_first"] = row["wer"] / rows[0]["wer"] if rows[0]["wer"] else float("nan")
            row["vs_first_low"], row["vs_first_high"] = ratio_bounds(drawn, draws[0], utterances)
    columns = list(rows[0])
    print("  ".join(f"{c:>16}" for c in columns))
    for row in rows:
        print("  ".join(f"{row[c]:>16.3f}" if isinstance(row[c], float) else f"{row[c]:>16}" for c in columns))
    if args.errors:
        for combo, out in zip(combos, texts, strict=True):
            print()
            print_errors(", ".join(f"{k}={v:g}" for k, v in combo.items()) or "defaults", refs, out)
        if args.offline:
            print()
            print_errors("offline faster-whisper", refs, offline_by_file)
    if profiler:
        print()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
