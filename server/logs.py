"""Logging with the session id on every line about a session.

The id lives in a context variable. Session workers set it, and so does every blocking call
they hand to a native thread, so lines logged deep inside the pipeline or a backend (which do
not know about sessions) still carry ``session=<id>``. Configured only by the entry point.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

SESSION: contextvars.ContextVar[str] = contextvars.ContextVar("livescribe_session", default="-")
FORMAT = "%(asctime)s %(levelname)s %(name)s session=%(session)s: %(message)s"


class SessionFilter(logging.Filter):
    """Adds ``record.session`` (the current session id, or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = SESSION.get()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(SessionFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # The Speechmatics SDK logs expected failures (quota, drops) at ERROR; our own WARNING
    # with the cloud_* code says the same once.
    logging.getLogger("speechmatics").setLevel(logging.CRITICAL)
    # One line per HTTP request (every /ready poll), logged twice by gevent-websocket's
    # handler: only with --log-level DEBUG.
    if logging.getLevelName(level) != logging.DEBUG:
        logging.getLogger("geventwebsocket.handler").setLevel(logging.WARNING)


def in_session(session_id: str, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` wrapped to run with ``session_id`` as the logging context (any thread)."""

    @functools.wraps(fn)
    def run(*args: Any) -> T:
        token = SESSION.set(session_id)
        try:
            return fn(*args)
        finally:
            SESSION.reset(token)

    return run
