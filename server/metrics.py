"""Prometheus metrics, one registry per app (tests build many apps in one process).

Sources: the session listener (sessions, errors, failovers, final latency), an observer on the
local backend (decode step latency and real-time factor), the file API (file jobs) and, at
scrape time, a collector reading live state (active sessions, audio received/transcribed).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.base import SAMPLE_RATE, Final

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


class _Arrivals:
    """Wall-clock arrival of one session's audio: ``(samples accepted so far, time)`` marks."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.times: list[float] = []

    def add(self, accepted: int, now: float) -> None:
        self.samples.append(accepted)
        self.times.append(now)

    def received_at(self, sample: int) -> float | None:
        """When the chunk holding ``sample`` arrived; drops older marks (finals only move on)."""
        i = bisect.bisect_left(self.samples, sample)
        if i >= len(self.samples):
            i = len(self.samples) - 1  # the end of the last chunk (rounding, resampler tail)
        if i < 0:
            return None
        at = self.times[i]
        del self.samples[:i], self.times[:i]
        return at


class Metrics:
    """The app's metrics; call :meth:`attach` once to wire it to sessions and the backend."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_started = Counter("livescribe_sessions", "Sessions started, by backend", ["backend"], registry=r)
        self.decode_seconds = Histogram(
            "livescribe_decode_step_seconds",
            "Wall time of one live decode step of the local model",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.real_time_factor = Histogram(
            "livescribe_real_time_factor",
            "Compute time over audio time: per live decode step (source=live, the decoded window)"
            " and per uploaded file (source=file)",
            ["source"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "livescribe_final_latency_seconds",
            "From the arrival of the audio where a final ends to the final being emitted",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("livescribe_errors", "Errors reported to clients, by code", ["code"], registry=r)
        self.failovers = Counter(
            "livescribe_cloud_failovers", "Cloud sessions that failed over to the local model", ["code"], registry=r
        )
        self.pauses = Counter(
            "livescribe_client_pauses",
            "Times a session's client sent nothing for --idle-final and its last words were finalised",
            ["backend"],
            registry=r,
        )
        self.drops = Counter(
            "livescribe_session_drops",
            "Sessions whose client's connection dropped (event=dropped; kept for --resume-grace) and"
            " sessions a client came back to (event=resumed)",
            ["event"],
            registry=r,
        )
        self.file_jobs = Counter(
            "livescribe_file_jobs", "Uploaded files transcribed, by outcome (ok, error)", ["outcome"], registry=r
        )
        self.file_audio_seconds = Counter(
            "livescribe_file_audio_seconds", "Seconds of uploaded audio transcribed", registry=r
        )
        self._lock = threading.Lock()
        self._arrivals: dict[str, _Arrivals] = {}
        # Totals of stopped sessions; the running ones are read at scrape time.
        self._done_received = 0
        self._done_processed = 0
        self._sessions: Any = None
        self._file_jobs: Any = None

    # --- wiring ------------------------------------------------------------------------

    def attach(self, sessions: Any, local_backend: Any = None, file_jobs: Any = None) -> None:
        """Listen to ``sessions``, observe ``local_backend``'s decodes, read ``file_jobs``' queue."""
        self._sessions = sessions
        self._file_jobs = file_jobs
        sessions.listeners.append(self.on_session)
        observers = getattr(local_backend, "observers", None)
        if observers is not None:
            # The backend may outlive this app (tests share one model): hold the metrics
            # weakly and drop observers whose app is gone.
            observers[:] = [o for o in observers if not (isinstance(o, _WeakObserver) and o.dead)]
            observers.append(_WeakObserver(self))
        self.registry.register(_LiveCollector(self))

    # --- sources -----------------------------------------------------------------------

    def on_decode(self, audio_seconds: float, elapsed: float) -> None:
        self.decode_seconds.observe(elapsed)
        if audio_seconds > 0:
            self.real_time_factor.labels("live").observe(elapsed / audio_seconds)

    def on_file(self, audio_seconds: float, elapsed: float, ok: bool) -> None:
        self.file_jobs.labels("ok" if ok else "error").inc()
        if ok:
            self.file_audio_seconds.inc(audio_seconds)
            if audio_seconds > 0:
                self.real_time_factor.labels("file").observe(elapsed / audio_seconds)

    def on_session(self, kind: str, session: Any, detail: Any) -> None:
        """A :class:`~server.sessions.SessionManager` listener."""
        now = time.monotonic()
        if kind == "started":
            self.sessions_started.labels(session.backend).inc()
            with self._lock:
                self._arrivals[session.id] = _Arrivals()
        elif kind == "audio":
            with self._lock:
                arrivals = self._arrivals.get(session.id)
                if arrivals is not None:
                    arrivals.add(session.accepted, now)
        elif kind == "event" and isinstance(detail, Final):
            end_sample = round((detail.end + session.offset) * SAMPLE_RATE)
            with self._lock:
                arrivals = self._arrivals.get(session.id)
                received = arrivals.received_at(end_sample) if arrivals is not None else None
            if received is not None:
                self.final_latency.observe(max(0.0, now - received))
        elif kind == "error":
            self.errors.labels(getattr(detail, "code", "internal_error")).inc()
        elif kind == "paused":
            self.pauses.labels(session.backend).inc()
        elif kind in ("dropped", "resumed"):
            self.drops.labels(kind).inc()
        elif kind == "failover":
            self.failovers.labels(getattr(detail, "code", "backend_error")).inc()
        elif kind == "stopped":
            with self._lock:
                self._arrivals.pop(session.id, None)
                self._done_received += session.accepted
                self._done_processed += session.processed

    def count_error(self, code: str) -> None:
        """An error answered outside a session (the HTTP API)."""
        self.errors.labels(code).inc()

    def live_totals(self) -> tuple[dict[str, int], float, float]:
        """Active sessions per backend, and audio seconds received and transcribed so far."""
        active: dict[str, int] = {}
        with self._lock:
            received, processed = self._done_received, self._done_processed
            # A session already counted in the done totals may still be listed until its
            # stop completes: skip those (no arrivals entry any more).
            running = [s for s in self._sessions.active() if s.id in self._arrivals] if self._sessions else []
            for session in running:
                active[session.backend] = active.get(session.backend, 0) + 1
                received += session.accepted
                processed += session.processed
        return active, received / SAMPLE_RATE, processed / SAMPLE_RATE


class _WeakObserver:
    """A backend observer that forwards to a :class:`Metrics` while it is alive."""

    def __init__(self, metrics: Metrics) -> None:
        self._ref = weakref.ref(metrics)

    @property
    def dead(self) -> bool:
        return self._ref() is None

    def __call__(self, audio_seconds: float, elapsed: float) -> None:
        metrics = self._ref()
        if metrics is not None:
            metrics.on_decode(audio_seconds, elapsed)


class _LiveCollector(Collector):
    """Values read at scrape time from the session manager and the file queue."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = weakref.ref(metrics)

    def describe(self) -> list:
        return []  # names are only known at collect time; skip the registry's duplicate check

    def collect(self) -> Iterator:
        metrics = self._metrics()
        if metrics is None:
            return
        active, received, processed = metrics.live_totals()
        sessions = GaugeMetricFamily(
            "livescribe_sessions_active", "Sessions running now, by backend", labels=["backend"]
        )
        # Every configured backend, at 0 when idle: a series that vanishes breaks graphs and alerts.
        configured = set(metrics._sessions.backends) if metrics._sessions is not None else set()
        for backend in sorted({"local", *configured, *active}):
            sessions.add_metric([backend], active.get(backend, 0))
        yield sessions
        yield CounterMetricFamily(
            "livescribe_audio_received_seconds", "Seconds of live audio accepted from clients", value=received
        )
        yield CounterMetricFamily(
            "livescribe_audio_transcribed_seconds", "Seconds of live audio handed to the recogniser", value=processed
        )
        jobs = metrics._file_jobs
        if jobs is not None:
            status = jobs.status()
            yield GaugeMetricFamily("livescribe_file_jobs_queued", "Uploaded files waiting", value=status["queued"])
            yield GaugeMetricFamily(
                "livescribe_file_jobs_running", "Uploaded files being transcribed", value=status["running"]
            )
