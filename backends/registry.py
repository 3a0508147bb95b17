"""The explicit list of backends, imported lazily by name.

Nothing heavy is imported until a backend is asked for, so ``import backends`` works without
a GPU, a model or the network. Adding a backend means adding one line here.
"""

from __future__ import annotations

import importlib

from backends.base import Backend
from backends.errors import InvalidRequest

BACKENDS: dict[str, str] = {
    "local": "backends.local:LocalBackend",
    "cloud": "backends.cloud:CloudBackend",
}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``; :class:`InvalidRequest` for an unknown name."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}", code="unknown_backend"
        ) from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
