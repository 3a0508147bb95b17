"""What the chosen async mode provides: background tasks, queues and native threads.

Socket.IO handlers run on the event loop (greenlets under gevent/eventlet). Model calls block
for hundreds of milliseconds, so they always go to a *native* thread through
:meth:`Runtime.run_blocking`: gevent's threadpool, eventlet's ``tpool``, or the calling thread
itself in ``threading`` mode (where every session worker already is a native thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Runtime:
    def __init__(self, socketio: Any, native_threads: int) -> None:
        self.socketio = socketio
        self.mode: str = socketio.async_mode
        if self.mode == "gevent":
            import gevent

            pool = gevent.get_hub().threadpool
            # One native thread per concurrent blocking call; sessions beyond this would wait.
            pool.maxsize = max(pool.maxsize, native_threads)
            self._blocking = pool.apply
        elif self.mode == "eventlet":
            from eventlet import tpool

            self._blocking = lambda fn, args: tpool.execute(fn, *args)
        else:
            self._blocking = lambda fn, args: fn(*args)

    def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a native thread and wait for it without blocking the loop."""
        return self._blocking(fn, args)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start a background task of the async mode (greenlet or thread)."""
        return self.socketio.start_background_task(fn, *args)

    def queue(self) -> Any:
        """A FIFO queue that blocks cooperatively in this async mode."""
        return self.socketio.server.eio.create_queue()

    @property
    def queue_empty(self) -> type[Exception]:
        return self.socketio.server.eio.get_queue_empty_exception()

    def lock(self) -> Any:
        """A mutex that waits cooperatively in this async mode (a green lock under gevent and
        eventlet, where a plain lock held across a yield would block the whole loop)."""
        if self.mode == "gevent":
            from gevent.lock import Semaphore

            return Semaphore()
        if self.mode == "eventlet":
            from eventlet.semaphore import Semaphore

            return Semaphore()
        return threading.Lock()

    def sleep(self, seconds: float) -> None:
        self.socketio.sleep(seconds)
