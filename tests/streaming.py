"""Helpers to replay PCM through Socket.IO clients and check what came back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from server.protocol import join_finals

CHUNK_BYTES = 3200  # 100 ms of 16 kHz s16
BYTES_PER_SECOND = 32000  # 16 kHz s16


def paced_chunks(
    pcm: bytes, speed: float = 1.0, chunk: int = CHUNK_BYTES, bytes_per_second: int = BYTES_PER_SECOND
) -> Iterator[bytes]:
    """``pcm`` in ``chunk``-byte pieces, each yielded when a microphone playing at ``speed`` x
    real time would have recorded it (an absolute schedule: a late piece delays no other)."""
    started = time.monotonic()
    for offset in range(0, len(pcm), chunk):
        yield pcm[offset : offset + chunk]
        due = started + (offset + chunk) / bytes_per_second / speed
        time.sleep(max(0.0, due - time.monotonic()))


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the client saw it
    name: str
    data: Any


class TestClientRecorder:
    __test__ = False  # not a test class, despite the name
    """Wraps a Flask-SocketIO test client: records events with arrival times."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: list[Received] = []

    def poll(self) -> None:
        now = time.monotonic()
        for packet in self.client.get_received():
            args = packet.get("args") or [None]
            self.events.append(Received(now, packet["name"], args[0]))

    def named(self, name: str) -> list[Any]:
        self.poll()
        return [e.data for e in self.events if e.name == name]

    def wait_for(self, name: str, timeout: float = 30.0, count: int = 1) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.named(name)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} within {timeout} s; got {[e.name for e in self.events]}")

    def stream(
        self, pcm: bytes, speed: float = 1.0, chunk: int = CHUNK_BYTES, bytes_per_second: int = BYTES_PER_SECOND
    ) -> None:
        """Send ``pcm`` as audio messages paced at ``speed`` x real time."""
        for piece in paced_chunks(pcm, speed, chunk, bytes_per_second):
            self.client.emit("audio", piece)
            self.poll()


def words_ending_after(client: Any, seconds: float) -> list[dict]:
    """The final words ``client`` (anything with ``named``) received that end after ``seconds``."""
    return [w for f in client.named("final") for w in f.get("words", []) if w["end"] > seconds]


def wait_for_words_ending_after(client: Any, seconds: float, timeout: float = 20.0) -> None:
    """Wait until a final holds a word that ends after ``seconds`` of session audio."""
    deadline = time.monotonic() + timeout
    while not words_ending_after(client, seconds):
        assert time.monotonic() < deadline, f"no final word ending after {seconds} s within {timeout} s"
        time.sleep(0.05)


def finals_text(finals: list[dict]) -> str:
    return join_finals((f["text"], f.get("joins_previous", False)) for f in finals)


def assert_finals_well_formed(finals: list[dict]) -> None:
    """segment_id increases from 0; times are non-decreasing and inside each final."""
    assert [f["segment_id"] for f in finals] == list(range(len(finals)))
    starts = [f["start"] for f in finals]
    assert starts == sorted(starts), starts
    for f in finals:
        assert f["start"] <= f["end"]
        for w in f.get("words", []):
            assert f["start"] - 0.01 <= w["start"] <= w["end"] <= f["end"] + 0.01, (f, w)


def assert_partials_precede_finals(events: list[Received], min_share: float = 0.8) -> None:
    """Most finals were previewed: a partial overlapping the final's span arrived before it.

    Not every final must be: a very short utterance can be committed by its end-of-speech
    decode before any step decode ran.
    """
    partials: list[tuple[float, dict]] = []
    previewed = total = 0
    for event in events:
        if event.name == "partial" and event.data["text"]:
            partials.append((event.at, event.data))
        elif event.name == "final":
            total += 1
            final = event.data
            if any(p["start"] < final["end"] and p["end"] > final["start"] for _, p in partials):
                previewed += 1
    assert total > 0, "no finals at all"
    assert previewed / total >= min_share, f"only {previewed}/{total} finals were preceded by a partial"
