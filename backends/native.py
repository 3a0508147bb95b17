"""Synchronisation between native threads that survives gevent and eventlet monkey patching.

Decodes and the cloud streams' event loops run on native OS threads in every async mode. Under
monkey patching ``threading`` and ``_thread`` give green locks, which cannot block one native
thread until another wakes it; these helpers build on the *original* ``_thread`` functions.
"""

from __future__ import annotations

import _thread
import contextlib
import heapq
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def native_thread_api() -> tuple[Callable[..., Any], Callable[[], Any]]:
    """``(start_new_thread, allocate_lock)`` that stay native under gevent or eventlet monkey
    patching (both replace ``_thread``'s with green versions)."""
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        original = monkey.get_original("_thread", ["start_new_thread", "allocate_lock"])
        return original[0], original[1]
    if "eventlet.patcher" in sys.modules:
        from eventlet import patcher

        if patcher.is_monkey_patched("thread"):
            native = patcher.original("_thread")
            return native.start_new_thread, native.allocate_lock
    return _thread.start_new_thread, _thread.allocate_lock


class Notifier:
    """A condition variable built on native locks: one lock guards the state, waiters sleep
    on a lock of their own that ``notify_all`` releases."""

    def __init__(self, allocate_lock: Callable[[], Any]) -> None:
        self._allocate = allocate_lock
        self.lock = allocate_lock()
        self._waiters: list[Any] = []

    def notify_all(self) -> None:
        """Wake every waiter; the caller holds ``lock``."""
        for waiter in self._waiters:
            waiter.release()
        self._waiters.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (evaluated under ``lock``) holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                waiter = self._allocate()
                waiter.acquire()
                self._waiters.append(waiter)
            waiter.acquire(True, remaining)
            with self.lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


class PriorityGate:
    """At most ``slots`` holders at a time; of those waiting, urgent ones are admitted first
    (first come, first served within each class).

    A shared model decodes ``num_workers`` requests at once and queues the rest in arrival
    order; a decode someone is waiting on (an utterance's first words, its final) should not
    queue behind other streams' routine steps.
    """

    def __init__(self, slots: int) -> None:
        self._state = Notifier(native_thread_api()[1])
        self._slots = max(1, slots)
        self._running = 0
        self._waiting: list[tuple[int, int]] = []  # heap of (0 urgent / 1 not, arrival)
        self._arrivals = itertools.count()

    @contextlib.contextmanager
    def slot(self, urgent: bool = False) -> Iterator[None]:
        ticket = (0 if urgent else 1, next(self._arrivals))
        with self._state.lock:
            heapq.heappush(self._waiting, ticket)
        # Only the head of the queue may take a free slot, so admission cannot race.
        try:
            while not self._state.wait_for(lambda: self._running < self._slots and self._waiting[0] == ticket, 3600):
                pass
        except BaseException:  # interrupted while waiting: leave the queue to the others
            with self._state.lock:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._state.notify_all()
            raise
        with self._state.lock:
            heapq.heappop(self._waiting)
            self._running += 1
            self._state.notify_all()  # the next in line may fit in another free slot
        try:
            yield
        finally:
            with self._state.lock:
                self._running -= 1
                self._state.notify_all()

    @property
    def waiting(self) -> int:
        """Holders waiting for a slot right now."""
        return len(self._waiting)
