"""Streaming benchmark: real-time paced Socket.IO clients against a livescribe server.

Streams WAV files with reference JSON (the ``shared/corpus`` format) in 100 ms chunks paced to
the wall clock, with 1..N concurrent clients, and prints one table row per configuration:
WER of the joined finals (and of offline faster-whisper on the same audio, same model, beam 1),
final latency per reference phrase and per final word, first-partial latency, share of
reference words never finalised, partial updates per final word, words finalised on silence,
and server CPU seconds per audio second.

Timing model: a session's audio time ``t`` exists at wall time ``stream_start + t`` (chunk k,
covering ``[k*c, (k+1)*c)``, is sent at ``stream_start + (k+1)*c``, like a microphone that
ships each chunk once it is recorded). Event arrival times are stored relative to
``stream_start``, so a latency is simply ``arrival - audio_time``: a reference phrase's end for
the phrase final latency, each final word's own end for the per-word one. See bench/README.md.

    python -m bench.stream_bench                      # starts its own server, 1 stream
    python -m bench.stream_bench --streams 1,4 --json out.json
    python -m bench.stream_bench --url http://127.0.0.1:8000 --server-pid 1234
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

from bench.encoder_cost import yardstick
from bench.wer import ErrorCounts, align, normalize, ratio_interval_by_utterance, utterance_errors, word_errors

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "dev" / "en"
SAMPLE_RATE = 16000
# A final word belongs to the utterance whose [start - BEFORE, end + AFTER] holds its midpoint:
# word timestamps from Whisper are loose by a few hundred ms, mostly late at the end.
ASSIGN_BEFORE = 0.3
ASSIGN_AFTER = 0.5
# An event "shows" an utterance when its time range overlaps it by at least this much.
MIN_OVERLAP = 0.1


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class StreamFile:
    """One WAV stream with its reference."""

    stream_id: str
    wav_path: str
    language: str
    kind: str  # "speech" | "silence"
    duration: float
    utterances: tuple[Utterance, ...]
    pcm: bytes = field(repr=False)  # mono s16le at 16 kHz

    @property
    def reference(self) -> str:
        return " ".join(u.text for u in self.utterances)

    @property
    def is_speech(self) -> bool:
        return bool(self.utterances)


def load_stream(wav_path: str | Path) -> StreamFile:
    """Read a 16 kHz mono s16le WAV and the JSON reference beside it."""
    wav_path = Path(wav_path)
    with wave.open(str(wav_path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{wav_path}: expected mono 16-bit {SAMPLE_RATE} Hz PCM")
        pcm = wav.readframes(wav.getnframes())
    meta = json.loads(wav_path.with_suffix(".json").read_text())
    utterances = tuple(Utterance(float(u["start"]), float(u["end"]), u["text"]) for u in meta["utterances"])
    return StreamFile(
        stream_id=meta.get("stream_id", wav_path.stem),
        wav_path=str(wav_path),
        language=meta.get("language", "en"),
        kind=meta.get("kind", "speech" if utterances else "silence"),
        duration=len(pcm) / 2 / SAMPLE_RATE,
        utterances=utterances,
        pcm=pcm,
    )


def find_streams(paths: Sequence[str | Path]) -> list[StreamFile]:
    """WAV files (with their .json) given directly or found in the given folders."""
    wavs: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            wavs.extend(p for p in sorted(path.glob("*.wav")) if p.with_suffix(".json").is_file())
        else:
            wavs.append(path)
    if not wavs:
        raise SystemExit(f"no WAV + JSON streams in {', '.join(map(str, paths))}")
    return [load_stream(p) for p in wavs]


# --- one session's record and its metrics ---------------------------------------------------


@dataclass
class SessionRecord:
    """What streaming one file produced. Times are seconds relative to ``stream_start``."""

    stream_id: str
    client: int
    duration: float
    ready: dict[str, Any] = field(default_factory=dict)
    partials: list[tuple[float, dict]] = field(default_factory=list)
    finals: list[tuple[float, dict]] = field(default_factory=list)
    errors: list[tuple[float, dict]] = field(default_factory=list)
    stop_sent: float | None = None
    stopped_at: float | None = None
    stopped: dict[str, Any] | None = None
    max_send_lag: float = 0.0  # worst lateness of a chunk against its schedule


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float
    end: float
    arrival: float

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


def final_words(finals: Sequence[tuple[float, dict]], spread: bool = True) -> list[TimedWord]:
    """Every finalised word with its audio times and arrival time.

    A final without ``words`` has its text spread evenly over its [start, end] (``spread``: a
    guess good enough to place each word in an utterance), or else gives each of its words its
    whole [start, end], the only times it states for them.
    """
    out: list[TimedWord] = []
    for arrival, final in finals:
        words = final.get("words")
        if words:
            out.extend(TimedWord(w["word"], float(w["start"]), float(w["end"]), arrival) for w in words)
            continue
        tokens = final.get("text", "").split()
        start, end = float(final.get("start", 0.0)), float(final.get("end", 0.0))
        if not spread:
            out.extend(TimedWord(t, start, end, arrival) for t in tokens)
            continue
        step = (end - start) / max(1, len(tokens))
        out.extend(TimedWord(t, start + i * step, start + (i + 1) * step, arrival) for i, t in enumerate(tokens))
    return out


def assign_words(words: Sequence[TimedWord], utterances: Sequence[Utterance]) -> list[int | None]:
    """Index of the utterance each word belongs to (None: outside every utterance).

    A word belongs to an utterance whose [start - 0.3, end + 0.5] holds its midpoint; when two
    windows hold it, the utterance nearest to the midpoint wins.
    """
    out: list[int | None] = []
    for word in words:
        best, best_distance = None, math.inf
        for i, utt in enumerate(utterances):
            if utt.start - ASSIGN_BEFORE <= word.mid <= utt.end + ASSIGN_AFTER:
                distance = max(utt.start - word.mid, word.mid - utt.end, 0.0)
                if distance < best_distance:
                    best, best_distance = i, distance
        out.append(best)
    return out


def final_latencies(record: SessionRecord, utterances: Sequence[Utterance]) -> list[float | None]:
    """Per utterance: arrival of the last final word assigned to it minus its end (None: no word)."""
    words = final_words(record.finals)
    finalised: list[float | None] = [None] * len(utterances)
    for word, index in zip(words, assign_words(words, utterances), strict=True):
        if index is not None:
            previous = finalised[index]
            finalised[index] = word.arrival if previous is None else max(previous, word.arrival)
    return [None if t is None else t - utt.end for t, utt in zip(finalised, utterances, strict=True)]


def word_final_latencies(record: SessionRecord) -> list[float]:
    """Per word of every final: the final's arrival minus the word's own end (audio time).

    The phrase latency above counts a long utterance once, at its last word; here each word
    counts, so the wait of its early words shows. Every final word counts, whether or not it
    is in a reference utterance. A final without ``words`` dates each of its words at the
    final's end: a lower bound, as none of them ends later.
    """
    # Audio time t exists at stream_start + t and arrivals are relative to stream_start (the
    # module's timing model), so a latency is arrival - audio time, as in final_latencies.
    return [w.arrival - w.end for w in final_words(record.finals, spread=False)]


def first_partial_latencies(record: SessionRecord, utterances: Sequence[Utterance]) -> list[float | None]:
    """Per utterance: arrival of the first non-empty partial or final overlapping it minus its start.

    Events that arrived before the utterance's first audio was sent cannot show it (their range
    only brushes it) and are ignored.
    """
    events = sorted(
        [(t, p) for t, p in record.partials if p.get("text", "").strip()] + list(record.finals),
        key=lambda item: item[0],
    )
    out: list[float | None] = []
    for utt in utterances:
        need = min(MIN_OVERLAP, (utt.end - utt.start) / 2)
        latency = None
        for arrival, payload in events:
            overlap = min(float(payload["end"]), utt.end) - max(float(payload["start"]), utt.start)
            if overlap >= need and arrival >= utt.start:
                latency = arrival - utt.start
                break
        out.append(latency)
    return out


def hypothesis_text(record: SessionRecord) -> str:
    """The finals joined as the protocol says (a word's rest joins it without a space)."""
    from server.protocol import join_finals

    return join_finals((f.get("text", ""), bool(f.get("joins_previous"))) for _, f in record.finals)


def never_finalised(reference: str, hypothesis: str, language: str = "en") -> tuple[int, int]:
    """(reference words that are deletions in the alignment to the finals, reference words)."""
    ref, hyp = normalize(reference, language), normalize(hypothesis, language)
    deleted = sum(1 for op, _, _ in align(ref, hyp) if op == "D")
    return deleted, len(ref)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def session_metrics(record: SessionRecord, stream: StreamFile, offline_text: str | None) -> dict[str, Any]:
    """Everything the table needs from one session, as plain numbers (kept in the JSON)."""
    hyp = hypothesis_text(record)
    errors = word_errors(stream.reference, hyp, stream.language)
    deleted, ref_len = never_finalised(stream.reference, hyp, stream.language)
    offline = word_errors(stream.reference, offline_text, stream.language) if offline_text is not None else None
    texts = [u.text for u in stream.utterances]
    final_word_count = len(final_words(record.finals))
    return {
        "stream_id": stream.stream_id,
        "client": record.client,
        "speech": stream.is_speech,
        "audio_s": stream.duration,
        "hypothesis": hyp,
        "errors": errors._asdict(),
        "offline_errors": offline._asdict() if offline else None,
        "offline_text": offline_text,
        # Per reference utterance, for the ratio's interval (summarize).
        "utterance_errors": utterance_errors(texts, hyp, stream.language),
        "offline_utterance_errors": (
            utterance_errors(texts, offline_text, stream.language) if offline_text is not None else None
        ),
        "never_finalised": deleted,
        "ref_words": ref_len,
        "final_latency": final_latencies(record, stream.utterances),
        "word_final_latency": word_final_latencies(record),
        "first_partial_latency": first_partial_latencies(record, stream.utterances),
        "partial_updates": sum(1 for _, p in record.partials if p.get("text", "").strip()),
        "final_words": final_word_count,
        "silence_words": 0 if stream.is_speech else len(normalize(hyp, stream.language)),
        "errors_events": [p for _, p in record.errors],
        "stopped": record.stopped is not None,
        "flush_s": (
            None if record.stopped_at is None or record.stop_sent is None else record.stopped_at - record.stop_sent
        ),
        "max_send_lag": record.max_send_lag,
    }


def wer_ratio_interval(metrics: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """95% interval of the streaming/offline WER ratio, resampling the reference utterances
    (the sessions that streamed one file count once per utterance)."""
    return ratio_interval_by_utterance(
        (m["stream_id"], m["utterance_errors"], m["offline_utterance_errors"])
        for m in metrics
        if m["speech"] and m.get("offline_utterance_errors") is not None
    )


def summarize(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-session metrics into one table row."""

    def pooled(key: str) -> ErrorCounts | None:
        total = ErrorCounts(0, 0, 0, 0)
        for m in metrics:
            if not m["speech"]:
                continue
            if m[key] is None:
                return None
            total = total + ErrorCounts(**m[key])
        return total

    streaming, offline = pooled("errors"), pooled("offline_errors")
    wer_stream = streaming.wer if streaming and streaming.ref_len else math.nan
    wer_offline = offline.wer if offline and offline.ref_len else math.nan
    if math.isnan(wer_offline):
        ratio = math.nan
    elif wer_offline == 0:
        ratio = 1.0 if wer_stream == 0 else math.inf
    else:
        ratio = wer_stream / wer_offline
    ratio_low, ratio_high = wer_ratio_interval(metrics) if offline else (math.nan, math.nan)
    final_lat = [v for m in metrics for v in m["final_latency"] if v is not None]
    word_final_lat = [v for m in metrics for v in m["word_final_latency"]]
    first_lat = [v for m in metrics for v in m["first_partial_latency"] if v is not None]
    utterances = sum(len(m["final_latency"]) for m in metrics)
    ref_words = sum(m["ref_words"] for m in metrics)
    final_word_count = sum(m["final_words"] for m in metrics if m["speech"])
    return {
        "sessions": len(metrics),
        "audio_s": sum(m["audio_s"] for m in metrics),
        "wer": wer_stream,
        "wer_offline": wer_offline,
        "wer_ratio": ratio,
        "wer_ratio_low": ratio_low,
        "wer_ratio_high": ratio_high,
        "final_latency_median": percentile(final_lat, 50),
        "final_latency_p90": percentile(final_lat, 90),
        "word_final_latency_median": percentile(word_final_lat, 50),
        "word_final_latency_p90": percentile(word_final_lat, 90),
        "first_partial_median": percentile(first_lat, 50),
        "utterances": utterances,
        "utterances_without_final": utterances - len(final_lat),
        "never_finalised": sum(m["never_finalised"] for m in metrics) / ref_words if ref_words else math.nan,
        "partials_per_final_word": (
            sum(m["partial_updates"] for m in metrics if m["speech"]) / final_word_count
            if final_word_count
            else math.nan
        ),
        "silence_words": (
            sum(m["silence_words"] for m in metrics if not m["speech"])
            if any(not m["speech"] for m in metrics)
            else None
        ),
        "error_events": sum(len(m["errors_events"]) for m in metrics),
        "sessions_not_stopped": sum(1 for m in metrics if not m["stopped"]),
        "max_send_lag": max((m["max_send_lag"] for m in metrics), default=0.0),
    }


# --- the client -------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def stream_session(
    sio: Any,
    stream: StreamFile,
    client: int,
    *,
    backend: str = "local",
    language: str | None = None,
    chunk_s: float = 0.1,
    ready_timeout: float = 60.0,
    stop_timeout: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
) -> SessionRecord:
    """Stream one file over a connected ``socketio.Client`` and record every event.

    Chunk k is sent at ``stream_start + (k+1) * chunk_s`` by an absolute schedule, so a slow
    send delays one chunk, not every later one.
    """
    record = SessionRecord(stream_id=stream.stream_id, client=client, duration=stream.duration)
    ready, stopped = threading.Event(), threading.Event()
    base = [clock()]  # stream_start; reset once ready arrives

    def rel() -> float:
        return clock() - base[0]

    def on_ready(payload: dict) -> None:
        record.ready = payload
        ready.set()

    def on_partial(payload: dict) -> None:
        record.partials.append((rel(), payload))

    def on_final(payload: dict) -> None:
        record.finals.append((rel(), payload))

    def on_error(payload: dict) -> None:
        record.errors.append((rel(), payload))
        logger.warning("%s: server error %s", stream.stream_id, payload)
        if not ready.is_set():
            ready.set()  # the start was refused: fail now rather than after ready_timeout
        if payload.get("fatal"):
            stopped.set()

    def on_stopped(payload: dict) -> None:
        record.stopped_at = rel()
        record.stopped = payload
        stopped.set()

    handlers = {"ready": on_ready, "partial": on_partial, "final": on_final, "error": on_error}
    handlers["stopped"] = on_stopped
    for name, handler in handlers.items():
        sio.on(name, handler)

    sio.emit(
        "start",
        {
            "backend": backend,
            "language": language or stream.language,
            "sample_rate": SAMPLE_RATE,
            "encoding": "pcm_s16le",
        },
    )
    if not ready.wait(ready_timeout) or not record.ready:
        raise BenchError(f"{stream.stream_id}: no 'ready' within {ready_timeout:.0f} s ({record.errors})")

    chunk_bytes = round(chunk_s * SAMPLE_RATE) * 2
    start = clock()
    base[0] = start
    for k, offset in enumerate(range(0, len(stream.pcm), chunk_bytes)):
        chunk = stream.pcm[offset : offset + chunk_bytes]
        due = start + offset / 2 / SAMPLE_RATE + len(chunk) / 2 / SAMPLE_RATE
        delay = due - clock()
        if delay > 0:
            time.sleep(delay)
        else:
            record.max_send_lag = max(record.max_send_lag, -delay)
        if stopped.is_set():  # a fatal error ended the session
            break
        sio.emit("audio", chunk)
        if k == 0:
            logger.debug("%s: streaming", stream.stream_id)
    record.stop_sent = rel()
    sio.emit("stop")
    if not stopped.wait(stop_timeout):
        logger.warning("%s: no 'stopped' within %.0f s of stop", stream.stream_id, stop_timeout)
    return record


def run_client(
    url: str,
    streams: Sequence[StreamFile],
    client: int,
    barrier: threading.Barrier | None,
    results: list[SessionRecord],
    failures: list[str],
    **session_kwargs: Any,
) -> None:
    """One concurrent client: one connection, its files streamed one session after another."""
    import socketio

    sio = socketio.Client(reconnection=False)
    try:
        sio.connect(url, transports=["websocket"], wait_timeout=30)
        if barrier is not None:
            barrier.wait(timeout=120)
        for stream in streams:
            results.append(stream_session(sio, stream, client, **session_kwargs))
    except Exception as exc:  # reported in the table's header, never silently dropped
        logger.exception("client %d failed", client)
        failures.append(f"client {client}: {exc}")
        if barrier is not None:
            barrier.abort()
    finally:
        if sio.connected:
            sio.disconnect()


def plan_streams(streams: Sequence[StreamFile], clients: int, every_file: bool) -> list[list[StreamFile]]:
    """Files per client: round-robin over the clients (each gets at least one, reusing files
    when there are more clients than files), or every file per client, rotated."""
    if every_file:
        return [list(streams[i % len(streams) :]) + list(streams[: i % len(streams)]) for i in range(clients)]
    plan: list[list[StreamFile]] = [[] for _ in range(clients)]
    for i in range(max(clients, len(streams))):
        plan[i % clients].append(streams[i % len(streams)])
    return plan


def run_configuration(
    url: str,
    streams: Sequence[StreamFile],
    clients: int,
    *,
    every_file: bool = False,
    server_pid: int | None = None,
    **session_kwargs: Any,
) -> tuple[list[SessionRecord], float | None, list[str]]:
    """Run ``clients`` concurrent clients; returns records, server CPU seconds, failures."""
    plan = plan_streams(streams, clients, every_file)
    results: list[SessionRecord] = []
    failures: list[str] = []
    barrier = threading.Barrier(clients) if clients > 1 else None
    cpu_before = process_cpu_seconds(server_pid) if server_pid else None
    threads = [
        threading.Thread(
            target=run_client,
            args=(url, plan[i], i, barrier, results, failures),
            kwargs=session_kwargs,
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu_after = process_cpu_seconds(server_pid) if server_pid else None
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return results, cpu, failures


# --- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def busy_neighbours(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep a core busy while the block runs: a loaded machine
    (a build, another service) next to the server, which is when timing-dependent faults show."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` and its waited-for children, from /proc (None if unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int] | None:
    """(all CPU time, time stolen by the hypervisor) in clock ticks since boot, from /proc/stat
    (None if unreadable). A VM whose host is busy loses time to steal: its programs,
    the benchmark's clients included, stall at random."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu" or len(first) < 9:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    ticks = [int(v) for v in first[1:9]]
    return sum(ticks), ticks[7]


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the machine's CPU time stolen by the hypervisor between two ``machine_ticks``."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_is_up(url: str) -> bool:
    """The server is ready to stream: ``GET /ready`` answers 200 (503 while the model loads);
    without /ready, ``GET /health`` 200; without either, a Socket.IO connect works."""
    for path in ("/ready", "/health"):
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=2) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                return False  # e.g. 503: up, but the model is still loading
        except (urllib.error.URLError, OSError):
            return False
    import socketio

    sio = socketio.Client(reconnection=False)
    try:
        sio.connect(url, transports=["websocket"], wait_timeout=5)
        return True
    except (socketio.exceptions.ConnectionError, OSError):
        return False
    finally:
        if sio.connected:
            sio.disconnect()


class ManagedServer:
    """``python -m server --port P --model M [extra]`` started and stopped by the bench."""

    def __init__(self, model: str, extra_args: Sequence[str] = (), start_timeout: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "server",
            "--port",
            str(self.port),
            "--model",
            model,
            *extra_args,
        ]
        self.start_timeout = start_timeout
        # Kept open for the server's lifetime (closed in __exit__), and kept on disk for a post-mortem.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="livescribe-bench-server-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Self:
        logger.info("starting %s (log %s)", shlex.join(self.command), self.log.name)
        self.process = subprocess.Popen(
            self.command, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"server exited with {self.process.returncode}:\n{self.tail()}")
            if server_is_up(self.url):
                return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise BenchError(f"server not up after {self.start_timeout:.0f} s:\n{self.tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])


# --- offline reference ----------------------------------------------------------------------------


def offline_cache_path(model: str, stream: StreamFile) -> Path:
    digest = hashlib.sha1(stream.pcm).hexdigest()[:12]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    safe_model = model.replace("/", "_")
    return Path(base) / "livescribe" / "bench" / "offline" / safe_model / f"{stream.stream_id}-{digest}.json"


def offline_transcripts(model: str, streams: Sequence[StreamFile], use_cache: bool = True) -> dict[str, str]:
    """Offline faster-whisper (beam 1, VAD filter) text per stream id, cached on disk.

    Runs before any streaming so it never competes with the server for CPU.
    """
    import numpy as np

    out: dict[str, str] = {}
    todo = []
    for stream in {s.stream_id: s for s in streams}.values():
        path = offline_cache_path(model, stream)
        if use_cache and path.is_file():
            out[stream.stream_id] = json.loads(path.read_text())["text"]
        else:
            todo.append((stream, path))
    if not todo:
        return out
    from backends.base import DecodeOptions
    from backends.local import LocalBackend, LocalBackendOptions

    backend = LocalBackend(LocalBackendOptions(model=model, warmup=False))
    backend.load()
    try:
        for stream, path in todo:
            started = time.monotonic()
            audio = np.frombuffer(stream.pcm, dtype="<i2").astype(np.float32) / 32768.0
            result = backend.transcribe(audio, DecodeOptions(language=stream.language, beam_size=1))
            text = " ".join(s.text.strip() for s in result.segments).strip()
            logger.info("offline %s: %.1f s", stream.stream_id, time.monotonic() - started)
            out[stream.stream_id] = text
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"model": model, "stream_id": stream.stream_id, "text": text}))
    finally:
        backend.close()
    return out


# --- report -------------------------------------------------------------------------------------------


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()},{load}"


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:{spec}}{suffix}"


def _interval(low: Any, high: Any) -> str:
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "n/a"
    return f"{_fmt(low, '.2f')}-{_fmt(high, '.2f')}"


COLUMNS = [
    ("streams", lambda r: str(r["streams"])),
    ("audio s", lambda r: _fmt(r["audio_s"], ".0f")),
    ("WER", lambda r: _fmt(r["wer"], ".3f")),
    ("offline WER", lambda r: _fmt(r["wer_offline"], ".3f")),
    ("ratio", lambda r: _fmt(r["wer_ratio"], ".2f", "x")),
    ("ratio 95% CI", lambda r: _interval(r.get("wer_ratio_low"), r.get("wer_ratio_high"))),
    ("final lat med", lambda r: _fmt(r["final_latency_median"], ".2f", " s")),
    ("final lat p90", lambda r: _fmt(r["final_latency_p90"], ".2f", " s")),
    ("word final lat med", lambda r: _fmt(r["word_final_latency_median"], ".2f", " s")),
    ("word final lat p90", lambda r: _fmt(r["word_final_latency_p90"], ".2f", " s")),
    ("1st partial med", lambda r: _fmt(r["first_partial_median"], ".2f", " s")),
    ("never final", lambda r: _fmt(r["never_finalised"] * 100, ".1f", "%")),
    ("partials/word", lambda r: _fmt(r["partials_per_final_word"], ".2f")),
    ("silence words", lambda r: _fmt(r["silence_words"], "d")),
    ("CPU s/audio s", lambda r: _fmt(r["cpu_per_audio_s"], ".2f")),
]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table, columns right-aligned to their widest cell."""
    cells = [[name for name, _ in COLUMNS]] + [[render(row) for _, render in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- entry point ----------------------------------------------------------------------------------------


def parse_streams_arg(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("--streams takes positive integers, e.g. 1 or 1,4")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_bench",
        description="Stream WAV files through a livescribe server in real time and measure it.",
    )
    parser.add_argument(
        "paths",
        nargs="*",
        default=[str(DEFAULT_CORPUS)],
        help=f"WAV files (JSON reference beside) or folders of them (default: {DEFAULT_CORPUS})",
    )
    parser.add_argument("--streams", type=parse_streams_arg, default=[1], help="concurrent clients, e.g. 1,4")
    parser.add_argument(
        "--every-file",
        action="store_true",
        help="every client streams every file (rotated); default: files are shared out round-robin",
    )
    parser.add_argument("--model", default="tiny.en", help="model for the server and the offline reference")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--language", default=None, help="override the references' language")
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid, for CPU")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for the started server (repeatable, e.g. --server-arg=--log-level=debug)",
    )
    parser.add_argument("--chunk-ms", type=int, default=100)
    parser.add_argument("--no-offline", action="store_true", help="skip the offline faster-whisper WER")
    parser.add_argument("--no-cache", action="store_true", help="recompute the offline transcripts")
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="run N CPU-bound processes beside the server while streaming (a loaded machine)",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write raw numbers and events here")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    if not args.verbose:
        for noisy in ("socketio", "engineio", "urllib3", "faster_whisper"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    streams = find_streams(args.paths)
    command = shlex.join(["python", "-m", "bench.stream_bench", *(sys.argv[1:] if argv is None else argv)])
    offline = None if args.no_offline else offline_transcripts(args.model, streams, use_cache=not args.no_cache)
    session_kwargs = {
        "backend": args.backend,
        "language": args.language,
        "chunk_s": args.chunk_ms / 1000,
        "stop_timeout": args.stop_timeout,
    }

    def run_all(url: str, pid: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        rows, raw, failures = [], [], []
        for clients in args.streams:
            logger.info("streaming %d client(s) to %s", clients, url)
            ticks = machine_ticks()
            with busy_neighbours(args.busy):
                records, cpu, failed = run_configuration(
                    url, streams, clients, every_file=args.every_file, server_pid=pid, **session_kwargs
                )
            steal = steal_share(ticks, machine_ticks())
            failures.extend(f"{clients} streams: {f}" for f in failed)
            by_id = {s.stream_id: s for s in streams}
            metrics = [
                session_metrics(r, by_id[r.stream_id], offline.get(r.stream_id) if offline else None) for r in records
            ]
            row = summarize(metrics)
            row["streams"] = clients
            row["cpu_s"] = cpu
            row["cpu_per_audio_s"] = cpu / row["audio_s"] if cpu is not None and row["audio_s"] else None
            row["steal"] = steal
            row["busy"] = args.busy
            rows.append(row)
            raw.append(
                {
                    "streams": clients,
                    "summary": row,
                    "sessions": metrics,
                    "records": [asdict(r) for r in records],
                }
            )
        return rows, raw, failures

    # Before the server starts, so that nothing competes with it.
    speed = yardstick()
    server_command = None
    if args.url:
        rows, raw, failures = run_all(args.url, args.server_pid)
        url = args.url
    else:
        with ManagedServer(args.model, args.server_arg) as server:
            server_command = shlex.join(server.command)
            rows, raw, failures = run_all(server.url, server.pid)
            url = server.url

    print(f"command: {command}")
    print(f"machine: {machine_description()}")
    print(f"speed:   {speed}")
    print(f"server:  {server_command or url}  model {args.model}")
    print(f"files:   {', '.join(s.stream_id for s in streams)}; chunks {args.chunk_ms} ms paced in real time")
    ready = next((r["ready"] for c in raw for r in c["records"] if r["ready"]), {})
    if ready:
        print(
            "session: "
            + ", ".join(f"{k} {ready.get(k)}" for k in ("backend", "model", "device", "compute_type") if k in ready)
        )
    for row in rows:
        notes = []
        if row["utterances_without_final"]:
            notes.append(f"{row['utterances_without_final']}/{row['utterances']} utterances without a final word")
        if row["error_events"]:
            notes.append(f"{row['error_events']} error events")
        if row["sessions_not_stopped"]:
            notes.append(f"{row['sessions_not_stopped']} sessions without 'stopped'")
        if row["max_send_lag"] > 0.05:
            notes.append(f"client pacing lagged up to {row['max_send_lag']:.2f} s")
        if row["busy"]:
            notes.append(f"{row['busy']} busy process(es) ran beside the server")
        if row["steal"] is not None and row["steal"] >= 0.01:
            notes.append(f"the hypervisor took {row['steal']:.0%} of the CPU time (steal)")
        if notes:
            print(f"note ({row['streams']} streams): " + "; ".join(notes))
    for failure in failures:
        print(f"FAILED {failure}")
    print()
    print(format_table(rows))
    if args.json_out:
        payload = {
            "command": command,
            "machine": machine_description(),
            "speed": speed,
            "server": server_command or url,
            "model": args.model,
            "files": [s.stream_id for s in streams],
            "configurations": raw,
        }
        Path(args.json_out).write_text(json.dumps(_json_safe(payload), indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
