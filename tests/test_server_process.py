"""A real server process on loopback (gevent, WebSocket) driven by python-socketio clients."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from bench.wer import wer
from tests.conftest import Fixture
from tests.server_process import Client, running_server
from tests.streaming import assert_finals_well_formed, finals_text, wait_for_words_ending_after


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with running_server() as server:
        yield server.url


@pytest.mark.slow
def test_two_sessions_a_watcher_and_a_responsive_loop(server_url: str, en00: Fixture, en01: Fixture):
    speaker_a, speaker_b, watcher, pinger = (Client(server_url) for _ in range(4))
    try:
        speaker_a.sio.emit("start", {"language": "en", "room": "room-a"})
        speaker_b.sio.emit("start", {})
        ready_a = speaker_a.wait_for("ready")[0]
        ready_b = speaker_b.wait_for("ready")[0]
        assert ready_a["room"] == "room-a" and ready_b["language"] == "en"
        watcher.sio.emit("join", {"room": "room-a"})
        watcher.wait_for("joined")

        # Both speakers stream at once (paced 2x real time); meanwhile the event loop must
        # keep answering: a ping round trip every 200 ms.
        round_trips: list[float] = []
        done = threading.Event()

        def ping() -> None:
            while not done.is_set():
                sent = time.monotonic()
                pinger.sio.call("ping", {}, timeout=10)
                round_trips.append(time.monotonic() - sent)
                time.sleep(0.2)

        threads = [
            threading.Thread(target=speaker_a.stream, args=(en00.pcm, 2.0)),
            threading.Thread(target=speaker_b.stream, args=(en01.pcm, 2.0)),
            threading.Thread(target=ping),
        ]
        for t in threads:
            t.start()
        threads[0].join()
        threads[1].join()
        done.set()
        threads[2].join()
        speaker_a.sio.emit("stop")
        speaker_b.sio.emit("stop")
        stopped_a = speaker_a.wait_for("stopped", timeout=90)[0]
        speaker_b.wait_for("stopped", timeout=90)[0]
        watcher.wait_for("stopped", timeout=10)

        finals_a, finals_b = speaker_a.named("final"), speaker_b.named("final")
        assert_finals_well_formed(finals_a)
        assert_finals_well_formed(finals_b)
        assert wer(en00.text, finals_text(finals_a)) < 0.15
        assert wer(en01.text, finals_text(finals_b)) < 0.15
        assert stopped_a["transcript"] == finals_text(finals_a)
        assert watcher.named("final") == finals_a
        assert all(f["session_id"] == ready_a["session_id"] for f in watcher.named("final"))
        assert speaker_a.named("error") == [] and speaker_b.named("error") == []

        assert len(round_trips) > 50
        median = statistics.median(round_trips)
        assert median < 0.1, f"ping median {median * 1000:.0f} ms while two sessions decode"
    finally:
        for client in (speaker_a, speaker_b, watcher, pinger):
            client.sio.disconnect()


def test_a_paused_client_gets_its_last_words_final_under_gevent(server_url: str, en00: Fixture):
    # The worker's idle check (--idle-final) under the production async mode: the clip ends as
    # "... starting with the area code." ends (9.9 s), and the client sends nothing more.
    clip = en00.clip(9.95)
    client = Client(server_url)
    try:
        client.sio.emit("start", {"language": "en"})
        client.wait_for("ready")
        client.stream(clip.pcm, speed=4.0)
        wait_for_words_ending_after(client, 9.0)
        client.sio.emit("stop")
        stopped = client.wait_for("stopped", timeout=30)[0]
    finally:
        client.sio.disconnect()
    assert wer(clip.text, stopped["transcript"]) < 0.2


def test_static_page_and_health(server_url: str):
    with urllib.request.urlopen(server_url + "/health", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(server_url + "/", timeout=5) as response:
        assert response.status == 200
        assert b"<html" in response.read().lower()


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_other_async_modes_transcribe(mode: str, en00: Fixture):
    if mode == "eventlet":
        pytest.importorskip("eventlet", reason="eventlet is optional: pip install eventlet")
    clip = en00.clip(10.0)
    with running_server("--async-mode", mode) as server:
        client = Client(server.url)
        try:
            client.sio.emit("start", {"language": "en"})
            client.wait_for("ready")
            client.stream(clip.pcm, speed=4.0)
            client.sio.emit("stop")
            stopped = client.wait_for("stopped", timeout=60)[0]
        finally:
            client.sio.disconnect()
        reference = " ".join(u["text"] for u in clip.reference["utterances"])
        assert wer(reference, stopped["transcript"]) < 0.2


def test_a_client_whose_connection_drops_resumes_its_session(server_url: str, en00: Fixture):
    # The speaker's network fails mid-phrase (12.5 s, inside "Please enter the number to be
    # removed from the blacklist", 11.1-14.0 s): the server keeps the session, finalises the
    # words it heard once the client has been silent for --idle-final, and hands the session
    # to the new connection that comes back with the token, with the finals it missed.
    import socket

    clip = en00.clip(25.0)
    cut = int(12.5 * 16000) * 2
    speaker, back = Client(server_url), None
    try:
        speaker.sio.emit("start", {"language": "en"})
        ready = speaker.wait_for("ready")[0]
        speaker.stream(clip.pcm[:cut], speed=4.0)
        speaker.sio.eio.ws.sock.shutdown(socket.SHUT_RDWR)  # no goodbye: a dropped network
        time.sleep(2.0)  # the server notices, and finalises what it heard (--idle-final 1 s)
        before = speaker.named("final")

        back = Client(server_url)
        last = before[-1]["seq"] if before else -1  # the last event of the session it has
        back.sio.emit("resume", {"session_id": ready["session_id"], "token": ready["resume_token"], "after": last})
        resumed = back.wait_for("resumed")[0]
        assert resumed["session_id"] == ready["session_id"] and resumed["state"] == "running"
        assert resumed["received"] * 2 == cut  # everything sent before the drop arrived
        missed = back.wait_for("final", timeout=5)
        first = before[-1]["segment_id"] + 1 if before else 0
        assert missed[0]["segment_id"] == first, "the words finalised while away were not replayed"
        back.stream(clip.pcm[resumed["received"] * 2 :], speed=4.0)
        back.sio.emit("stop")
        stopped = back.wait_for("stopped", timeout=60)[0]
    finally:
        for client in (speaker, back):
            if client is not None:
                client.sio.disconnect()
    finals = before + back.named("final")
    assert [f["segment_id"] for f in finals] == list(range(len(finals)))  # none lost, none twice
    assert_finals_well_formed(finals)
    assert stopped["transcript"] == finals_text(finals)
    assert stopped["duration"] == pytest.approx(25.0, abs=0.05)
    assert wer(clip.text, stopped["transcript"]) < 0.2
    assert back.named("error") == []
