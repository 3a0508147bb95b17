"""The error hierarchy shared by backends and the server.

Every failure a client can see is a :class:`TranscriptionError` with a stable ``code``, a
human ``message`` and a ``fatal`` flag; the server turns it into exactly one ``error`` event
shape. Vendor exceptions (CTranslate2, Speechmatics, network) are mapped to these classes at
the backend boundary so nothing above a backend needs to know vendor types.
"""

from __future__ import annotations

from typing import Any


class TranscriptionError(Exception):
    """Base class: a failure with a protocol error code."""

    code: str = "internal_error"
    fatal: bool = False

    def __init__(self, message: str, *, code: str | None = None, fatal: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What a stream produced in the same call before it failed (words it had already
        # committed): the caller still delivers them, or they would be lost with the call.
        self.events: list[Any] = []
        # Stream seconds from which the audio the stream had taken is lost with this failure
        # (an utterance whose final decode failed); None: only the audio of the failed call.
        self.lost_since: float | None = None
        if code is not None:
            self.code = code
        if fatal is not None:
            self.fatal = fatal

    def to_payload(self) -> dict[str, Any]:
        """The ``error`` event payload: ``{code, message, fatal}``."""
        return {"code": self.code, "message": self.message, "fatal": self.fatal}


class InvalidRequest(TranscriptionError):
    """The client sent something the protocol does not allow; the session survives."""

    code = "invalid_request"


class InvalidAudio(InvalidRequest):
    """An ``audio`` payload that cannot be decoded in the announced encoding."""

    code = "invalid_audio"


class ConfigurationError(TranscriptionError):
    """The server was configured in a way that cannot work (bad model, device, flag)."""

    code = "configuration_error"
    fatal = True


class ModelNotFound(ConfigurationError):
    """A model name or path that cannot be found locally nor downloaded."""

    code = "model_not_found"


class BackendUnavailable(TranscriptionError):
    """The requested backend is not usable on this server (no key, not loaded)."""

    code = "backend_unavailable"


class BackendFailure(TranscriptionError):
    """A backend failed while streaming; the session may fail over to another backend."""

    code = "backend_error"


class CloudError(BackendFailure):
    """An error reported by the cloud service, with our own code (``cloud_*``)."""

    code = "cloud_error"
