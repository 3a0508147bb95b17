"""Socket.IO event handlers: translate protocol events into session-manager calls.

Handlers run on the event loop and never block on a model: they validate, enqueue and answer.
Every :class:`TranscriptionError` becomes one ``error`` event to the sender.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import request
from flask_socketio import SocketIO, emit, join_room, leave_room

from backends.errors import InvalidRequest, TranscriptionError
from server.protocol import PROTOCOL_VERSION, parse_room
from server.sessions import SessionManager

logger = logging.getLogger(__name__)

# Disconnect reasons of a connection that ended without a goodbye: its session may be resumed.
DROPPED = frozenset({SocketIO.reason.PING_TIMEOUT, SocketIO.reason.TRANSPORT_CLOSE, SocketIO.reason.TRANSPORT_ERROR})


def register_socket_events(socketio: SocketIO, manager: SessionManager, server_info: Callable[[], dict]) -> None:
    """Attach the protocol v1 handlers to ``socketio``."""

    def _reports_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
        """Answer a handler's failure with one ``error`` event; the connection goes on."""

        @functools.wraps(handler)
        def wrapper(*args: Any) -> Any:
            try:
                # A client may send any number of arguments with an event: more than the
                # protocol's one is the client's mistake, not a server failure.
                if len(args) > 1:
                    raise InvalidRequest(f"'{handler.__name__[3:]}' takes one argument, got {len(args)}")
                return handler(*args)
            except TranscriptionError as exc:
                error = exc
            except Exception:
                logger.exception("handler %s failed", handler.__name__)
                error = TranscriptionError(f"internal error in '{handler.__name__}'; see the server log")
            manager.report_error(request.sid, error)
            payload = error.to_payload()
            session = manager.session_of(request.sid)
            if handler.__name__ == "on_audio" and session is not None and session.state == "running":
                payload["session_id"] = session.id  # an error about this session's audio
            emit("error", payload)
            return None

        return wrapper

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> None:
        emit("server_info", server_info())

    @socketio.on("disconnect")
    def on_disconnect(reason: Any = None, *_: Any) -> None:
        manager.disconnect(request.sid, dropped=reason in DROPPED)

    @socketio.on("start")
    @_reports_errors
    def on_start(data: Any = None) -> None:
        session = manager.start(request.sid, data)
        join_room(session.room)
        emit("ready", manager.describe(session))

    @socketio.on("resume")
    @_reports_errors
    def on_resume(data: Any = None) -> None:
        manager.resume(request.sid, data)

    @socketio.on("audio")
    @_reports_errors
    def on_audio(data: Any = None) -> None:
        manager.audio(request.sid, data)

    @socketio.on("stop")
    @_reports_errors
    def on_stop(*_: Any) -> None:
        manager.stop(request.sid)

    @socketio.on("join")
    @_reports_errors
    def on_join(data: Any = None) -> None:
        room = parse_room(data.get("room") if isinstance(data, dict) else None)
        join_room(room)
        manager.watching.add((request.sid, room))
        sessions = manager.in_room(room)
        emit(
            "joined",
            {
                "room": room,
                "sessions": [
                    {"session_id": s.id, "backend": s.backend, "language": s.language or "auto"} for s in sessions
                ],
            },
        )

    @socketio.on("leave")
    @_reports_errors
    def on_leave(data: Any = None) -> None:
        room = parse_room(data.get("room") if isinstance(data, dict) else None)
        own = manager.session_of(request.sid)
        if own is not None and own.room == room and own.state == "running":
            raise InvalidRequest("cannot leave the room of your own running session", code="invalid_room")
        leave_room(room)
        manager.watching.discard((request.sid, room))
        emit("left", {"room": room})

    @socketio.on("ping")
    def on_ping(*_: Any) -> dict:
        return {"server_time": time.time()}


def server_info_payload(manager: SessionManager, version: str) -> dict:
    from server.audio import ENCODINGS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

    return {
        "protocol": PROTOCOL_VERSION,
        "version": version,
        "backends": manager.backend_infos(),
        "default_backend": "local",
        "default_language": manager.config.language,
        "idle_final": manager.config.idle_final,  # seconds; 0: a pause does not finalise
        "resume_grace": manager.config.resume_grace,  # seconds; 0: a dropped connection ends its session
        "limits": {
            "max_payload_bytes": manager.config.max_payload_bytes,
            "min_sample_rate": MIN_SAMPLE_RATE,
            "max_sample_rate": MAX_SAMPLE_RATE,
            "encodings": list(ENCODINGS),
        },
    }
