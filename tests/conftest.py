"""Shared fixtures: the real model is loaded once per test session; every test gets a fresh app."""

from __future__ import annotations

import json
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backends.base import Backend
from backends.local import LocalBackend, LocalBackendOptions
from server.app import create_app, get_context
from server.config import Config

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class Fixture:
    """A corpus stream: 16 kHz mono s16 PCM plus its reference."""

    name: str
    pcm: bytes
    reference: dict

    @property
    def audio(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype="<i2").astype(np.float32) / 32768.0

    @property
    def text(self) -> str:
        return " ".join(u["text"] for u in self.reference["utterances"])

    @property
    def duration(self) -> float:
        return len(self.pcm) / 32000

    @property
    def path(self) -> Path:
        return FIXTURES / f"{self.name}.wav"

    def clip(self, end: float) -> Fixture:
        """The first ``end`` seconds, with the utterances that end inside them."""
        utterances = [u for u in self.reference["utterances"] if u["end"] <= end]
        return Fixture(self.name, self.pcm[: int(end * 16000) * 2], {**self.reference, "utterances": utterances})


def load_fixture(name: str) -> Fixture:
    with wave.open(str(FIXTURES / f"{name}.wav"), "rb") as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        pcm = wav.readframes(wav.getnframes())
    reference = json.loads((FIXTURES / f"{name}.json").read_text())
    return Fixture(name, pcm, reference)


@pytest.fixture(scope="session")
def en00() -> Fixture:
    return load_fixture("en-dev-00")


@pytest.fixture(scope="session")
def en01() -> Fixture:
    return load_fixture("en-dev-01")


@pytest.fixture(scope="session")
def silence() -> Fixture:
    return load_fixture("en-dev-silence-00")


@pytest.fixture(scope="session")
def fr00() -> Fixture:
    return load_fixture("fr-dev-00")


@pytest.fixture(scope="session")
def local_backend() -> Iterator[LocalBackend]:
    """Whisper tiny.en (embedded, offline), loaded once for the whole test session."""
    backend = LocalBackend(LocalBackendOptions(model="tiny.en", num_workers=2))
    backend.load()
    yield backend
    backend.close()


def cloud_backend_without_key() -> Backend | None:
    try:
        from backends.cloud import CloudBackend, CloudBackendOptions
    except ImportError:
        return None
    return CloudBackend(CloudBackendOptions(api_key=None))


@pytest.fixture
def config() -> Config:
    return Config(async_mode="threading", max_sessions=4)


@pytest.fixture
def app(config: Config, local_backend: LocalBackend):
    backends: dict[str, Backend] = {"local": local_backend}
    cloud = cloud_backend_without_key()
    if cloud is not None:
        backends["cloud"] = cloud
    app = create_app(config, backends=backends)
    yield app
    get_context(app).sessions.shutdown(timeout=30)


@pytest.fixture
def socketio(app):
    return get_context(app).socketio
