"""The HTTP API: file transcription, server status and Prometheus metrics.

:func:`init_app` wires the operations side of a server: this blueprint, the file queue, the
metrics registry and the end-of-session analysis listener.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import quote

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import RequestEntityTooLarge

from backends.base import SAMPLE_RATE, TASKS, DecodeOptions, StreamOptions
from backends.errors import InvalidAudio, InvalidRequest, TranscriptionError
from server import __version__
from server.analysis import SessionAnalysis, analyze
from server.audio import load_audio
from server.file_jobs import FileJobs, QueueFull
from server.metrics import Metrics
from server.subtitles import FORMATS, render, transcript_from_result
from server.word_times import shown_segments

logger = logging.getLogger(__name__)

bp = Blueprint("livescribe_api", __name__)

_LANGUAGE = re.compile(r"[a-zA-Z]{2,3}(-[A-Za-z]{2,4})?")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class ApiState:
    """Stored as ``app.extensions["livescribe.api"]``."""

    started: float  # time.monotonic() at app creation (uptime)
    started_at: float  # wall clock
    metrics: Metrics
    file_jobs: FileJobs
    analysis: SessionAnalysis


@dataclass(frozen=True)
class FileRequest:
    language: str | None
    task: str
    format: str
    word_timestamps: bool
    analysis: bool


def init_app(app: Flask) -> ApiState:
    """Register the API on an app built by :func:`server.app.create_app`."""
    context = app.extensions["livescribe"]
    file_jobs = FileJobs(context.runtime, max_queued=context.config.max_file_jobs)
    metrics = Metrics()
    metrics.attach(context.sessions, context.backends.get("local"), file_jobs)
    analysis = SessionAnalysis()
    context.sessions.listeners.append(analysis)
    state = ApiState(time.monotonic(), time.time(), metrics, file_jobs, analysis)
    app.extensions["livescribe.api"] = state
    app.register_blueprint(bp)
    return state


def _context():
    return current_app.extensions["livescribe"]


def _state() -> ApiState:
    return current_app.extensions["livescribe.api"]


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    _state().metrics.count_error(code)
    return jsonify(error={"code": code, "message": message}), status


# --- file transcription -------------------------------------------------------------------


def parse_file_request(values) -> FileRequest:
    """Options of ``POST /api/transcribe`` from query/form fields; raises :class:`InvalidRequest`."""
    language = (values.get("language") or "").strip() or "auto"
    if language != "auto" and not _LANGUAGE.fullmatch(language):
        raise InvalidRequest(
            f"language must be a code such as 'en' or 'auto', got {language!r}", code="unsupported_language"
        )
    task = values.get("task") or "transcribe"
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}", code="unsupported_task")
    format_name = values.get("format") or "json"
    if format_name not in FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}, got {format_name!r}", code="invalid_format")
    analysis = _flag(values, "analysis")
    if analysis and format_name != "json":
        raise InvalidRequest("analysis=true needs format=json", code="invalid_format")
    return FileRequest(
        language=None if language == "auto" else language.lower(),
        task=task,
        format=format_name,
        word_timestamps=_flag(values, "word_timestamps"),
        analysis=analysis,
    )


def _flag(values, name: str) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidRequest(f"{name} must be true or false, got {raw!r}")


@bp.after_request
def _allow_origins(response: Response) -> Response:
    """CORS for the HTTP API with the origins Socket.IO allows (``--cors-origins``): a page
    served elsewhere may upload files and read the status too."""
    allowed = _context().config.cors_origins
    origin = request.headers.get("Origin")
    if origin and allowed and ("*" in allowed or origin in allowed):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.vary.add("Origin")
        if request.method == "OPTIONS":  # a preflight
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Content-Type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
    return response


@bp.post("/api/transcribe")
def transcribe_file():
    """Transcribe one uploaded file (multipart field ``file``) with the shared local model."""
    context = _context()
    limit = context.config.max_upload_bytes
    too_large = f"the upload exceeds the limit of {limit} bytes (server option --max-upload-bytes)"
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "payload_too_large", too_large)
    # Also bounds a body without Content-Length (chunked) while it is read.
    request.max_content_length = limit
    try:
        upload = request.files.get("file")
        options = parse_file_request(request.values)
    except RequestEntityTooLarge:
        return _error(413, "payload_too_large", too_large)
    except InvalidRequest as exc:
        return _error(400, exc.code, exc.message)
    if upload is None:
        return _error(400, "invalid_request", 'send the audio as a multipart/form-data field named "file"')

    backend = context.backends.get("local")
    if backend is None or not backend.info().available:
        return _error(503, "backend_unavailable", "the local model is not loaded")
    try:
        backend.validate(StreamOptions(language=options.language, task=options.task))
    except TranscriptionError as exc:
        return _error(400, exc.code, exc.message)

    name = PurePath(upload.filename or "upload").name
    size = request.content_length or 0
    decode = DecodeOptions(
        language=options.language,
        task=options.task,
        word_timestamps=options.word_timestamps or options.analysis,
        beam_size=5,
    )

    def job():
        # Runs on a native thread, one file at a time (server.file_jobs).
        audio = load_audio(upload.stream, max_seconds=context.config.max_file_seconds)
        if audio.size == 0:
            raise InvalidAudio("the file contains no audio samples")
        started = time.perf_counter()
        result = backend.transcribe(audio, decode)
        return result, len(audio) / SAMPLE_RATE, time.perf_counter() - started

    metrics = _state().metrics
    try:
        result, seconds, elapsed = _state().file_jobs.run(name, size, job)
    except QueueFull as exc:
        return _error(503, exc.code, exc.message)
    except InvalidAudio as exc:
        metrics.on_file(0.0, 0.0, ok=False)
        # FFmpeg names the input it failed on, which for an upload is a nameless stream.
        reason = re.sub(r": '?None'?$", "", exc.message)
        return _error(413 if exc.code == "audio_too_long" else 400, exc.code, f"{name}: {reason}")
    except TranscriptionError as exc:
        metrics.on_file(0.0, 0.0, ok=False)
        logger.warning("file %s: %s (%s)", name, exc.message, exc.code)
        return _error(500, exc.code, exc.message)
    metrics.on_file(seconds, elapsed, ok=True)
    logger.info("file %s: %.1f s of audio transcribed in %.1f s", name, seconds, elapsed)

    transcript = transcript_from_result(result, words=options.word_timestamps)
    if options.format == "json":
        if options.analysis:
            segments = shown_segments(result.segments, result.duration)  # the words' times as shown
            transcript["analysis"] = analyze(segments, [], seconds, result.language)
        return jsonify(transcript)
    fmt = FORMATS[options.format]
    return Response(
        render(transcript, fmt.name),
        content_type=fmt.content_type,
        headers={"Content-Disposition": content_disposition(f"{PurePath(name).stem}.{fmt.extension}")},
    )


def content_disposition(filename: str) -> str:
    """``inline`` with the file name for every client (RFC 6266): an ASCII stand-in, and the
    name itself percent-encoded as UTF-8 (a header holds only Latin-1, and a quote or a line
    break in an uploaded name must not end the value)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# --- operations ---------------------------------------------------------------------------


@bp.get("/api/status")
def status():
    """Version, backends, model and device, sessions and queued work, uptime."""
    context = _context()
    state = _state()
    local = context.backends.get("local")
    info = local.info() if local is not None else None
    active = context.sessions.active()
    by_backend: dict[str, int] = {}
    for session in active:
        by_backend[session.backend] = by_backend.get(session.backend, 0) + 1
    return jsonify(
        version=__version__,
        uptime=round(time.monotonic() - state.started, 3),
        started_at=round(state.started_at, 3),
        backends=context.sessions.backend_infos(),
        model=info.model if info else None,
        device=info.device if info else None,
        device_name=info.device_name if info else None,
        compute_type=info.compute_type if info else None,
        sessions={"active": len(active), "max": context.config.max_sessions, "by_backend": by_backend},
        queue={
            "files": state.file_jobs.status(),
            "live_decodes": getattr(local, "live_decodes", 0),
            "sessions": [
                {
                    "session_id": s.id,
                    "backend": s.backend,
                    "state": s.state,
                    "connected": s.attached,  # False: its connection dropped, a resume may come
                    "duration": round(s.duration, 3),
                    "backlog_seconds": round((s.accepted - s.processed) / SAMPLE_RATE, 3),
                }
                for s in active
            ],
        },
    )


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition of this app's registry."""
    return Response(generate_latest(_state().metrics.registry), content_type=CONTENT_TYPE_LATEST)
