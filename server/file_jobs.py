"""The file transcription queue: uploaded files are transcribed one at a time, in order.

One job at a time bounds what files can take from live sessions to one decode worker of the
shared model (and one decoded file in memory); inside a job the local backend also pauses
between windows while live decodes run (see ``LocalBackend.transcribe`` and
docs/OPERATIONS.md). Requests wait cooperatively for their turn; a full queue is refused
rather than letting uploads pile up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backends.errors import TranscriptionError
from server.runtime import Runtime

logger = logging.getLogger(__name__)


class QueueFull(TranscriptionError):
    code = "server_busy"


@dataclass
class Job:
    name: str
    size: int  # uploaded bytes
    fn: Callable[[], Any]
    done: Any  # a runtime queue: one item when the job has finished
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    result: Any = None
    error: BaseException | None = None


class FileJobs:
    """A FIFO of blocking jobs run one at a time on a native thread."""

    def __init__(self, runtime: Runtime, max_queued: int) -> None:
        self.runtime = runtime
        self.max_queued = max_queued
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._worker_running = False
        self._lock = threading.Lock()  # held only for a few lines, never across a wait

    def run(self, name: str, size: int, fn: Callable[[], Any]) -> Any:
        """Queue ``fn``, wait for its turn and its result (re-raising what it raised).

        Raises :class:`QueueFull` when ``max_queued`` jobs are already waiting.
        """
        job = Job(name=name, size=size, fn=fn, done=self.runtime.queue())
        with self._lock:
            # Only jobs behind a running one wait: with max_queued 0 a file is still taken
            # when nothing runs.
            busy = self._current is not None or bool(self._pending)
            if busy and len(self._pending) >= self.max_queued:
                raise QueueFull(f"{len(self._pending)} files are already waiting to be transcribed; try again later")
            self._pending.append(job)
            start_worker = not self._worker_running
            self._worker_running = True
        if start_worker:
            self.runtime.spawn(self._worker)
        job.done.get()
        if job.error is not None:
            raise job.error
        return job.result

    def status(self) -> dict:
        """What ``/api/status`` shows: the running job and the queue."""
        now = time.monotonic()
        with self._lock:
            current, pending = self._current, list(self._pending)
        return {
            "running": 0 if current is None else 1,
            "queued": len(pending),
            "max_queued": self.max_queued,
            "current": None
            if current is None or current.started_at is None
            else {"file": current.name, "bytes": current.size, "running_for": round(now - current.started_at, 3)},
            "waiting": [{"file": j.name, "bytes": j.size, "waiting_for": round(now - j.queued_at, 3)} for j in pending],
        }

    def _worker(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._worker_running = False
                    return
                job = self._pending.popleft()
                job.started_at = time.monotonic()
                self._current = job
            try:
                job.result, job.error = self.runtime.run_blocking(_capture, job.fn)
            finally:
                with self._lock:
                    self._current = None
                job.done.put(True)


def _capture(fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
    # Return the exception rather than raise it across the thread boundary: gevent's
    # threadpool would print every expected failure (a bad upload) as a crash.
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which re-raises it
        return None, exc
