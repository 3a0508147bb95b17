"""``python -m server``: parse the configuration, load the model, serve."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (systemd, docker, kill) takes the same path as Ctrl-C: stop serving, finish
    # the running sessions so their last finals reach the rooms, exit 0.
    raise KeyboardInterrupt


def eventlet_terminate(main: Any) -> Callable[[int, object], None]:
    """The SIGTERM handler under eventlet: interrupt ``main``, the greenlet that serves.

    A signal handler runs in whichever greenlet the main thread is running, often a Socket.IO
    handler; python-engineio runs handlers under a bare ``except:``, which logged the
    interrupt as "disconnect handler error" and served on until the process was killed (seen
    in a test run). So the interrupt is thrown into the serving greenlet instead.
    """

    def terminate(signum: int, frame: object) -> None:
        import greenlet
        from eventlet import hubs

        if greenlet.getcurrent() is main:
            raise KeyboardInterrupt
        hubs.get_hub().schedule_call_global(0, main.throw, KeyboardInterrupt())

    return terminate


def main(argv: list[str] | None = None) -> int:
    from server.config import Config

    config = Config.from_args(argv)
    # Monkey patching must happen before anything imports socket/threading users.
    if config.async_mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    elif config.async_mode == "eventlet":
        import eventlet

        # thread=False: native threads stay native, so eventlet.tpool can run the model
        # (with threads patched, faster-whisper in tpool deadlocked under load).
        eventlet.monkey_patch(thread=False)

    import logging

    from server.logs import configure_logging

    configure_logging(config.log_level)
    logger = logging.getLogger("server")

    from backends.errors import TranscriptionError
    from server.app import create_app, get_context

    # Before the model loads (a minute on a slow disk), not after: the port may be taken.
    busy = _port_taken(config.host, config.port)
    if busy:
        logger.error("cannot start: %s:%d is not free (%s); choose another with --port", config.host, config.port, busy)
        return 2
    try:
        app = create_app(config)
    except TranscriptionError as exc:
        logger.error("cannot start: %s", exc.message)
        return 2
    context = get_context(app)
    local = context.backends["local"].info()
    logger.info(
        "listening on http://%s:%d (async mode %s; model %s on %s, %s, %s)",
        config.host,
        config.port,
        config.async_mode,
        local.model,
        local.device,
        local.device_name,
        local.compute_type,
    )
    if config.async_mode == "gevent":
        import gevent

        # A Python signal handler would run in gevent's hub and print the interrupt as a
        # crash; gevent's own handler runs in a greenlet and stops the server cleanly.
        gevent.signal_handler(signal.SIGTERM, context.socketio.stop)
    elif config.async_mode == "eventlet":
        import greenlet

        signal.signal(signal.SIGTERM, eventlet_terminate(greenlet.getcurrent()))
    else:
        # Threading: the handler runs on the main thread, which serves; handlers run elsewhere.
        signal.signal(signal.SIGTERM, _terminate)
    try:
        context.socketio.run(app, host=config.host, port=config.port, log_output=False, allow_unsafe_werkzeug=True)
    except KeyboardInterrupt:
        pass
    finally:
        logger.info("shutting down: finishing %d session(s)", len(context.sessions.active()))
        context.sessions.shutdown()
    return 0


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address here), or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server binds: a port in TIME_WAIT after a restart is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
