"""The application factory: ``create_app(config)`` wires config, backends, sessions and routes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, jsonify, send_from_directory
from flask_socketio import SocketIO

from backends.base import Backend, StreamOptions
from backends.errors import ConfigurationError, TranscriptionError
from server import __version__
from server.config import Config
from server.http_api import init_app as init_http_api
from server.runtime import Runtime
from server.sessions import SessionManager
from server.socket_events import register_socket_events, server_info_payload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@dataclass(frozen=True)
class ServerContext:
    """Everything a request handler may need, stored as ``app.extensions["livescribe"]``."""

    config: Config
    socketio: SocketIO
    sessions: SessionManager
    backends: Mapping[str, Backend]
    runtime: Runtime


def build_backends(config: Config) -> dict[str, Backend]:
    """Create and load the configured backends (loads the model: seconds, may raise)."""
    from backends.local import LocalBackend

    local = LocalBackend(config.local)
    local.load()
    backends: dict[str, Backend] = {"local": local}
    cloud = _cloud_backend(config)
    if cloud is not None:
        backends["cloud"] = cloud
    return backends


def _cloud_backend(config: Config) -> Backend | None:
    try:
        from backends.cloud import CloudBackend, CloudBackendOptions
    except ImportError:  # the cloud extra is not installed
        logger.info("cloud backend not installed")
        return None
    return CloudBackend(
        CloudBackendOptions(
            api_key=config.cloud.api_key,
            url=config.cloud.url,
            max_delay=config.cloud.max_delay,
            operating_point=config.cloud.operating_point,
        )
    )


def create_app(config: Config, backends: Mapping[str, Backend] | None = None) -> Flask:
    """Build the Flask app and its Socket.IO server. ``backends`` defaults to
    :func:`build_backends` (tests pass already loaded ones to share one model)."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    socketio = SocketIO(
        app,
        async_mode=config.async_mode,
        cors_allowed_origins=list(config.cors_origins) or None,
        # Let oversized audio reach our handler, which answers with a clear error, instead
        # of Engine.IO dropping the connection.
        max_http_buffer_size=max(16 << 20, 4 * config.max_payload_bytes),
        # Events of one client are handled in order: audio chunks must not overtake each other.
        async_handlers=False,
        # A network that fails silently is noticed after a ping interval plus its timeout, by
        # the server and the client alike: 20 s instead of Engine.IO's 45 s of captions frozen
        # without a word before the page says "Reconnecting" (and resumes the session).
        ping_interval=10,
        ping_timeout=10,
        logger=False,
        engineio_logger=False,
    )
    if backends is None:
        backends = build_backends(config)
    _check_language(config.language, backends)
    runtime = Runtime(socketio, native_threads=config.max_sessions + 4)
    sessions = SessionManager(
        config,
        backends,
        runtime,
        emit=lambda event, payload, to: socketio.emit(event, payload, to=to),
        leave_room=lambda sid, room: socketio.server.leave_room(sid, room, namespace="/"),
        join_room=lambda sid, room: socketio.server.enter_room(sid, room, namespace="/"),
    )
    register_socket_events(socketio, sessions, lambda: server_info_payload(sessions, __version__))
    context = ServerContext(config=config, socketio=socketio, sessions=sessions, backends=backends, runtime=runtime)
    app.extensions["livescribe"] = context
    init_http_api(app)  # /api/transcribe, /api/status, /metrics, session analysis

    @app.get("/")
    def index():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.get("/ready")
    def ready():
        local = backends.get("local")
        # Loaded *and* warmed up (LocalBackend.ready); other backends: available.
        is_ready = local is not None and local.info().available and getattr(local, "ready", True)
        return jsonify(ready=is_ready), (200 if is_ready else 503)

    return app


def _check_language(language: str, backends: Mapping[str, Backend]) -> None:
    """``--language`` must be one a backend can run, or every default ``start`` fails."""
    if language == "auto":
        return
    usable = [backend for backend in backends.values() if backend.info().available]
    refusals = []
    for backend in usable:
        try:
            backend.validate(StreamOptions(language=language))
        except TranscriptionError as exc:
            refusals.append(exc.message)
    if usable and len(refusals) == len(usable):
        raise ConfigurationError(f"--language {language}: {'; '.join(refusals)}")
    for reason in refusals:
        logger.warning("--language %s: %s; its sessions must name a language", language, reason)


def get_context(app: Flask) -> ServerContext:
    return app.extensions["livescribe"]
