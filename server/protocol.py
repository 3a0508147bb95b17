"""Socket.IO protocol v1: parsing client requests and shaping server payloads.

docs/PROTOCOL.md is the contract; this module is its code. Nothing here touches sockets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from backends.base import TASKS, Final, LanguageDetected, Partial
from backends.errors import InvalidRequest
from server.audio import AudioFormat

PROTOCOL_VERSION = 1
_ROOM = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_START_KEYS = {"backend", "language", "task", "model", "sample_rate", "encoding", "room"}


@dataclass(frozen=True)
class StartRequest:
    backend: str
    language: str | None  # None: detect
    task: str
    model: str | None
    audio: AudioFormat
    room: str | None


def parse_room(value: object) -> str:
    if not isinstance(value, str) or not _ROOM.match(value):
        raise InvalidRequest(
            "room must be 1-128 characters of letters, digits, '_', '.', ':' or '-'", code="invalid_room"
        )
    return value


@dataclass(frozen=True)
class ResumeRequest:
    session_id: str
    token: str
    after: int  # the `seq` of the last event of the session the client has (-1: none)


def parse_resume(data: object) -> ResumeRequest:
    """Validate a ``resume`` payload: ``{session_id, token, after?}``."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"resume expects an object, got {type(data).__name__}")
    session_id, token, after = data.get("session_id"), data.get("token"), data.get("after", -1)
    if not isinstance(session_id, str) or not isinstance(token, str) or not session_id or not token:
        raise InvalidRequest("resume needs the session_id and the resume_token of its ready")
    if after is None:
        after = -1
    if isinstance(after, bool) or not isinstance(after, int) or after < -1:
        raise InvalidRequest(f"after must be the seq of the last event received (-1: none), got {after!r}")
    return ResumeRequest(session_id=session_id[:64], token=token[:128], after=after)


def parse_start(data: object, default_backend: str, default_language: str) -> StartRequest:
    """Validate a ``start`` payload (``None`` means all defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"start expects an object, got {type(data).__name__}")
    unknown = set(data) - _START_KEYS
    if unknown:
        raise InvalidRequest(f"unknown start field(s): {', '.join(sorted(map(str, unknown)))}")
    backend = data.get("backend") or default_backend
    if not isinstance(backend, str):
        raise InvalidRequest("backend must be a string", code="unknown_backend")
    language = data.get("language") or default_language
    if not isinstance(language, str) or not re.fullmatch(r"[a-zA-Z]{2,3}(-[A-Za-z]{2,4})?|auto", language):
        raise InvalidRequest(
            f"language must be a code such as 'en' or 'auto', got {language!r}", code="unsupported_language"
        )
    task = data.get("task") or "transcribe"
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}", code="unsupported_task")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string", code="unsupported_model")
    room = parse_room(data["room"]) if data.get("room") is not None else None
    return StartRequest(
        backend=backend,
        language=None if language == "auto" else language.lower(),
        task=task,
        model=model,
        audio=AudioFormat.parse(data.get("sample_rate"), data.get("encoding")),
        room=room,
    )


def partial_payload(session_id: str, event: Partial, offset: float) -> dict:
    return {
        "session_id": session_id,
        "text": event.text,
        "start": round(event.start + offset, 3),
        "end": round(event.end + offset, 3),
    }


def final_payload(session_id: str, segment_id: int, event: Final, offset: float) -> dict:
    return {
        "session_id": session_id,
        "segment_id": segment_id,
        "text": event.text,
        "joins_previous": event.joins_previous,
        "start": round(event.start + offset, 3),
        "end": round(event.end + offset, 3),
        "words": [
            {
                "word": w.text.strip(),
                "start": round(w.start + offset, 3),
                "end": round(w.end + offset, 3),
                "probability": round(w.probability, 3),
            }
            for w in event.words
        ],
    }


def language_payload(session_id: str, event: LanguageDetected) -> dict:
    return {"session_id": session_id, "language": event.language, "probability": round(event.probability, 3)}


def join_finals(finals: Iterable[tuple[str, bool]]) -> str:
    """A transcript from finals' ``(text, joins_previous)``: a space between two finals, none
    before one that goes on with the previous one's last word."""
    transcript = ""
    for text, joins in finals:
        text = text.strip()
        if text:
            transcript += text if joins or not transcript else " " + text
    return transcript
