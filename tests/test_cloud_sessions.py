"""Cloud sessions through Socket.IO: the real server code, the real cloud backend, and the fake
Speechmatics real-time server on loopback (tests/fakes/speechmatics.py).

Most scenarios use the Flask-SocketIO test client in threading mode; one runs a real
``python -m server`` process (gevent, WebSocket) to cover the default async mode end to end.
The fake's transcripts are the fixture's reference text, timed by the audio it receives, so
cloud-only sessions stream much faster than real time.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from backends.cloud import CloudBackend, CloudBackendOptions
from backends.local import LocalBackend
from bench.wer import align, normalize, wer
from server.app import create_app, get_context
from server.config import CloudOptions, Config
from tests.conftest import Fixture
from tests.fakes.speechmatics import FakeSpeechmatics, Utterance
from tests.server_process import Client, running_server
from tests.streaming import (
    CHUNK_BYTES,
    TestClientRecorder,
    assert_finals_well_formed,
    assert_partials_precede_finals,
    finals_text,
)

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
# en-dev-00's first 23 s: six prompts, the last ending at 22.4 s (so stop has a tail to flush).
CLIP_END = 23.0
# Mid-way through "Please enter the number to be removed from the blacklist." (11.1-14.0 s):
# the cloud has finalised the prompts before it, not this one.
DROP_AT = 13.0


def utterances_of(fixture: Fixture) -> list[Utterance]:
    return [Utterance(u["start"], u["end"], u["text"]) for u in fixture.reference["utterances"]]


@pytest.fixture(scope="module")
def clip(en00: Fixture) -> Fixture:
    return en00.clip(CLIP_END)


def make_app(local_backend: LocalBackend, fake: FakeSpeechmatics, api_key: str | None = None, **config):
    cloud = CloudBackend(CloudBackendOptions(api_key=api_key or fake.api_key, url=fake.url))
    return create_app(
        Config(async_mode="threading", max_sessions=4, **config), backends={"local": local_backend, "cloud": cloud}
    )


@pytest.fixture
def serve(local_backend: LocalBackend, clip: Fixture) -> Iterator[Callable[..., tuple[Flask, FakeSpeechmatics]]]:
    """``serve(api_key=None, config=None, fixture=clip, **fake_knobs)``: an app whose cloud
    backend talks to a fake transcribing ``fixture``; both are shut down after the test."""
    with contextlib.ExitStack() as stack:

        def factory(
            api_key: str | None = None, config: dict | None = None, fixture: Fixture = clip, **knobs
        ) -> tuple[Flask, FakeSpeechmatics]:
            fake = stack.enter_context(FakeSpeechmatics(utterances_of(fixture), **knobs))
            app = make_app(local_backend, fake, api_key, **(config or {}))
            stack.callback(get_context(app).sessions.shutdown, timeout=30)
            return app, fake

        yield factory


def connect(app) -> TestClientRecorder:
    recorder = TestClientRecorder(get_context(app).socketio.test_client(app))
    recorder.wait_for("server_info")
    return recorder


def start(recorder: TestClientRecorder, **fields) -> dict:
    recorder.client.emit("start", fields)
    return recorder.wait_for("ready")[-1]


def stream_together(clients: list[tuple[TestClientRecorder, bytes]], speed: float) -> None:
    """Interleave 100 ms chunks to several clients, paced at ``speed`` x real time, so their
    sessions really run at the same time."""
    started = time.monotonic()
    longest = max(len(pcm) for _, pcm in clients)
    for offset in range(0, longest, CHUNK_BYTES):
        for recorder, pcm in clients:
            if offset < len(pcm):
                recorder.client.emit("audio", pcm[offset : offset + CHUNK_BYTES])
                recorder.poll()
        due = started + (offset + CHUNK_BYTES) / 32000 / speed
        time.sleep(max(0.0, due - time.monotonic()))


def stream_until_error(recorder: TestClientRecorder, pcm: bytes, speed: float) -> None:
    """Stream like a client that stops sending once it is told its session failed."""
    started = time.monotonic()
    for offset in range(0, len(pcm), CHUNK_BYTES):
        recorder.client.emit("audio", pcm[offset : offset + CHUNK_BYTES])
        if recorder.named("error"):
            return
        due = started + (offset + CHUNK_BYTES) / 32000 / speed
        time.sleep(max(0.0, due - time.monotonic()))
    # The fake can fall behind the server's sends (CI did): it then drops the connection after
    # the server fed the last chunk. The session must hear of it without more audio.
    recorder.wait_for("error", timeout=30)


def deleted_reference_words(reference: str, hypothesis: str) -> list[str]:
    """Reference words the hypothesis has no counterpart for (not even a misrecognition)."""
    ref = normalize(reference)
    return [ref[i] for op, i, _ in align(ref, normalize(hypothesis)) if op == "D"]


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


# --- a normal session ------------------------------------------------------------------------


def test_cloud_session_end_to_end(serve, clip: Fixture):
    app, fake = serve(start_delay=0.2)
    client = connect(app)
    assert client.named("server_info")[0]["backends"]["cloud"]["available"] is True
    ready = start(client, backend="cloud", language="en")
    assert ready["backend"] == "cloud" and ready["device"] == "cloud" and ready["language"] == "en"
    assert ready["model"] == "enhanced" and ready["sample_rate"] == 16000

    client.stream(clip.pcm, speed=10.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]

    assert client.named("error") == []
    finals = client.named("final")
    assert_finals_well_formed(finals)
    assert_partials_precede_finals(client.events, min_share=1.0)  # the fake previews every prompt
    # The fake's finals are the reference text: the proxy must deliver every word of it.
    assert wer(clip.text, finals_text(finals)) == 0.0
    assert stopped["transcript"] == finals_text(finals)
    assert stopped["duration"] == pytest.approx(CLIP_END, abs=0.01)
    # Times are session seconds: each final is its reference prompt.
    reference = clip.reference["utterances"]
    assert len(finals) == len(reference)
    for final, utterance in zip(finals, reference, strict=True):
        assert final["start"] == pytest.approx(utterance["start"], abs=0.01)
        assert final["end"] == pytest.approx(utterance["end"], abs=0.01)
    assert all(f["session_id"] == ready["session_id"] for f in finals)
    # Partials replace each other; every final is followed by an empty one clearing the tail.
    names = [e.name for e in client.events if e.name in ("partial", "final")]
    for index, name in enumerate(names):
        if name == "final" and index + 1 < len(names):
            assert names[index + 1] == "partial"

    fake.wait_for_sessions(1)
    session = fake.sessions[0]
    assert session.violations == [] and session.frames_before_start == 0
    assert session.audio_bytes == len(clip.pcm)  # every accepted byte reached the cloud
    assert session.last_seq_no == session.frames and session.end_of_transcript


def test_cloud_session_with_auto_language_says_english(serve, clip: Fixture):
    # Speechmatics real-time cannot detect the language: "auto" runs in English, and the
    # client is told so up front rather than "auto" until a detection that never comes.
    app, fake = serve()
    client = connect(app)
    ready = start(client, backend="cloud")
    assert ready["language"] == "en"
    client.stream(clip.clip(6.0).pcm, speed=20.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=30)[0]
    (language,) = client.named("language")
    assert language == {"session_id": ready["session_id"], "language": "en", "probability": 0.0, "seq": language["seq"]}
    assert wer(clip.clip(6.0).text, stopped["transcript"]) == 0.0
    fake.wait_for_sessions(1)
    assert fake.sessions[0].start_message["transcription_config"]["language"] == "en"


# --- refused at start ----------------------------------------------------------------------------


def test_bad_key_answers_start_and_the_connection_can_go_local(serve, clip: Fixture):
    app, fake = serve(api_key="not-the-key")
    client = connect(app)
    client.client.emit("start", {"backend": "cloud", "language": "en"})
    error = client.wait_for("error")[0]
    assert error["code"] == "cloud_not_authorised" and error["fatal"] is False
    assert "not-the-key" not in error["message"]  # the key never reaches a client
    assert client.named("ready") == []
    assert fake.rejected_handshakes == 1 and fake.sessions == []

    # Nothing is left running on this connection: a local session starts and transcribes.
    ready = start(client, language="en")
    assert ready["backend"] == "local"
    first = clip.clip(9.95)
    client.stream(first.pcm, speed=8.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    assert wer(first.text, stopped["transcript"]) < 0.2
    assert [e["code"] for e in client.named("error")] == ["cloud_not_authorised"]


def test_quota_exceeded_at_start(serve):
    app, fake = serve(quota_exceeded=True)
    client = connect(app)
    client.client.emit("start", {"backend": "cloud", "language": "en"})
    error = client.wait_for("error")[0]
    assert error["code"] == "cloud_quota_exceeded"
    assert "retry" in error["message"]
    assert client.named("ready") == []
    fake.wait_for_sessions(1)
    assert fake.sessions[0].error == "quota_exceeded" and fake.sessions[0].frames == 0
    assert get_context(app).sessions.active() == []
    # The connection is still usable.
    assert start(client, language="en")["backend"] == "local"
    client.client.emit("stop")
    client.wait_for("stopped")


# --- the connection drops mid-stream --------------------------------------------------------------


def check_failover(events: list[tuple[str, dict]], clip: Fixture, session_id: str) -> None:
    """The protocol-level guarantees of a cloud -> local failover, from a client's event log
    (``(name, payload)`` in arrival order)."""
    names = [name for name, _ in events]
    assert names.count("backend_changed") == 1, names
    switch = names.index("backend_changed")
    changed = events[switch][1]
    assert changed["session_id"] == session_id
    assert (changed["from"], changed["to"], changed["code"]) == ("cloud", "local", "cloud_connection_lost")
    assert changed["reason"]
    at = changed["at"]
    # The cloud's last partial is cleared right after the switch.
    next_partial = next(payload for name, payload in events[switch:] if name == "partial")
    assert next_partial["text"] == "" and next_partial["start"] == at
    finals = [payload for name, payload in events if name == "final"]
    before = [payload for name, payload in events[:switch] if name == "final"]
    after = [payload for name, payload in events[switch:] if name == "final"]
    assert before and after, "finals from both backends"
    assert_finals_well_formed(finals)  # segment ids continue across the switch
    # The switch point is the end of the last final the client had from the cloud, which
    # precedes the drop; the cloud's finals are the reference prompts before it.
    assert at == pytest.approx(before[-1]["end"], abs=0.001)
    assert at < DROP_AT
    assert finals_text(before) == " ".join(u["text"] for u in clip.reference["utterances"][: len(before)])

    # Local finals are in session time: every one lies on a reference prompt after the switch
    # (without the session offset they would start near 0 s, on the cloud's prompts).
    prompts = clip.reference["utterances"]
    for final in after:
        assert final["start"] >= at - 0.01, (at, final)
        assert any(
            final["start"] < u["end"] + 0.5 and final["end"] > u["start"] - 0.5 for u in prompts if u["end"] > at
        )
        for word in final["words"]:
            assert word["start"] >= at - 0.01, (at, word)

    # No speech lost: every reference word has a counterpart in the finals. The cloud part is
    # exact, so any deletion comes from tiny.en on the re-fed audio; it may drop a word the way
    # it does without any failover (the local-only tests allow WER 0.2 on these prompts), so
    # allow two. A failover that lost the audio from committed_until to the drop would delete
    # a whole prompt (the ten words of "Please enter the number to be removed ...").
    hypothesis = finals_text(finals)
    deleted = deleted_reference_words(clip.text, hypothesis)
    assert len(deleted) <= 2, (deleted, hypothesis)
    assert wer(clip.text, hypothesis) < 0.15, hypothesis

    # No speech duplicated: the local model re-transcribes only audio after the last cloud
    # final, so no word sequence at the end of the cloud's finals comes back at the start of
    # the local ones more often than the reference says it.
    tail = normalize(finals_text(before))[-8:]
    head = normalize(finals_text(after))[:8]
    said, meant = Counter(ngrams(normalize(hypothesis), 2)), Counter(ngrams(normalize(clip.text), 2))
    for gram in set(ngrams(tail, 2)) & set(ngrams(head, 2)):
        assert said[gram] <= meant[gram], (gram, tail, head)


def test_dropped_connection_fails_over_to_local_without_losing_words(serve, clip: Fixture):
    app, fake = serve(fail_after=DROP_AT)
    client = connect(app)
    watcher = connect(app)
    ready = start(client, backend="cloud", language="en")
    watcher.client.emit("join", {"room": ready["room"]})
    watcher.wait_for("joined")
    assert ready["backend"] == "cloud"

    client.stream(clip.pcm, speed=4.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=90)[0]
    watcher.wait_for("stopped", timeout=10)

    assert client.named("error") == []  # recovered: the client only hears of the switch
    events = [(e.name, e.data) for e in client.events if e.name in ("final", "backend_changed", "partial")]
    check_failover(events, clip, ready["session_id"])
    assert stopped["transcript"] == finals_text(client.named("final"))
    assert stopped["duration"] == pytest.approx(CLIP_END, abs=0.01)
    # The room hears of the switch too.
    assert watcher.named("backend_changed") == client.named("backend_changed")
    assert watcher.named("final") == client.named("final")
    fake.wait_for_sessions(1)
    assert fake.sessions[0].dropped and fake.sessions[0].violations == []
    assert len(fake.sessions) == 1  # failover goes local, it does not retry the cloud


@pytest.mark.parametrize("slow_error", [False, True], ids=["", "slow-error-emit"])
def test_dropped_connection_without_failover_reports_the_lost_span(serve, clip: Fixture, slow_error: bool):
    app, fake = serve(config={"cloud": CloudOptions(failover=False)}, fail_after=DROP_AT)
    if slow_error:
        # Chunks keep arriving while the failure's error is on its way out (a loaded server):
        # they must be refused after it, never before, and none may be accepted unaccounted.
        sessions = get_context(app).sessions
        emit = sessions.emit

        def slow_emit(event: str, payload: dict, to: str) -> None:
            if event == "error" and payload.get("fatal"):
                time.sleep(0.5)
            emit(event, payload, to)

        sessions.emit = slow_emit
    client = connect(app)
    ready = start(client, backend="cloud", language="en")
    stream_until_error(client, clip.pcm, speed=4.0)
    # The session ends by itself: no stop needed.
    stopped = client.wait_for("stopped", timeout=60)[0]

    errors = client.named("error")
    error = errors[0]
    # One error for the failure; the session is over, so at most a chunk already on its way
    # when it ended is refused as not_started.
    assert [e["code"] for e in errors[1:]] in ([], ["not_started"]), errors
    assert error["code"] == "cloud_connection_lost" and error["fatal"] is True
    assert error["session_id"] == ready["session_id"]
    assert client.named("backend_changed") == []
    names = [e.name for e in client.events]
    assert names.index("error") < names.index("stopped")

    finals = client.named("final")
    assert finals and finals_text(finals) == stopped["transcript"]
    # The message names the untranscribed span: from the end of the last final delivered to
    # (at least) where the connection dropped.
    span = re.search(r"audio from ([\d.]+) s to ([\d.]+) s was not transcribed", error["message"])
    assert span, error["message"]
    lost_from, lost_to = float(span.group(1)), float(span.group(2))
    assert lost_from == pytest.approx(finals[-1]["end"], abs=0.01)
    # ... up to the end of all the audio the session accepted: nothing is left unaccounted.
    assert lost_to >= DROP_AT
    assert lost_to == pytest.approx(stopped["duration"], abs=0.01)
    # Nothing after the drop was transcribed, and nothing of the session was left unaccounted.
    assert finals[-1]["end"] < DROP_AT
    assert get_context(app).sessions.active() == []
    fake.wait_for_sessions(1)
    assert fake.sessions[0].dropped and len(fake.sessions) == 1
    # The connection can start again.
    assert start(client, language="en")["backend"] == "local"
    client.client.emit("stop")
    client.wait_for("stopped", count=2)


# --- a client that pauses: the cloud answers on its own time ---------------------------------------


def test_a_final_that_comes_back_after_the_last_chunk_reaches_a_client_that_sends_nothing(serve, clip: Fixture):
    # The fake finalises a prompt once it has received the prompt's end plus max_delay. Sent
    # up to that point and no further, the third prompt's final comes back after the server
    # fed the last chunk: only a worker that looks without new audio delivers it.
    app, _ = serve()
    client = connect(app)
    start(client, backend="cloud", language="en")
    prompts = clip.reference["utterances"][:3]
    chunks = math.ceil((prompts[-1]["end"] + CloudBackendOptions().max_delay) * 10)
    client.stream(clip.pcm[: chunks * CHUNK_BYTES], speed=10.0)
    finals = client.wait_for("final", count=3, timeout=5)
    assert finals_text(finals) == " ".join(p["text"] for p in prompts)
    client.client.emit("stop")
    client.wait_for("stopped", timeout=30)
    assert client.named("error") == []


def test_a_client_that_pauses_mid_phrase_gets_the_words_so_far_final(serve, clip: Fixture):
    # Stopped at 8.0 s, inside "Please enter your phone number, starting with the area code."
    # (6.6-9.9 s): the service would hold those words until later audio passed max_delay. After
    # --idle-final (1 s) without audio the server asks for them (ForceEndOfUtterance).
    app, fake = serve()
    client = connect(app)
    start(client, backend="cloud", language="en")
    client.stream(clip.pcm[: 80 * CHUNK_BYTES], speed=10.0)
    paused = time.monotonic()
    deadline = paused + 10
    while not [f for f in client.named("final") if f["text"].startswith("Please enter")]:
        assert time.monotonic() < deadline, "the words before the pause never became final"
        time.sleep(0.05)
    assert time.monotonic() - paused >= 1.0
    assert fake.sessions[0].forced == [pytest.approx(8.0)]
    # The session goes on: the rest of the phrase and the prompts after it, nothing lost or doubled.
    client.stream(clip.pcm[80 * CHUNK_BYTES :], speed=10.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=30)[0]
    assert normalize(stopped["transcript"]) == normalize(clip.text)
    assert_finals_well_formed(client.named("final"))
    assert client.named("error") == [] and fake.sessions[0].violations == []


def test_a_drop_while_the_client_sends_nothing_is_reported_without_more_audio(serve, clip: Fixture):
    app, fake = serve(config={"cloud": CloudOptions(failover=False)}, fail_after=DROP_AT)
    client = connect(app)
    ready = start(client, backend="cloud", language="en")
    # The fake drops the connection on receiving the last chunk, after the server fed it.
    client.stream(clip.pcm[: int(DROP_AT * 16000) * 2], speed=4.0)
    sent = time.monotonic()
    error = client.wait_for("error", timeout=10)[0]
    assert time.monotonic() - sent < 5
    stopped = client.wait_for("stopped", timeout=10)[0]
    assert error["code"] == "cloud_connection_lost" and error["fatal"] is True
    assert error["session_id"] == ready["session_id"]
    span = re.search(r"audio from ([\d.]+) s to ([\d.]+) s was not transcribed", error["message"])
    assert span, error["message"]
    finals = client.named("final")
    assert float(span.group(1)) == pytest.approx(finals[-1]["end"], abs=0.01)
    assert float(span.group(2)) == pytest.approx(DROP_AT, abs=0.01) == stopped["duration"]
    assert len(client.named("error")) == 1
    fake.wait_for_sessions(1)
    assert fake.sessions[0].dropped


def test_failover_starts_while_the_client_sends_nothing(serve, clip: Fixture):
    app, fake = serve(fail_after=DROP_AT)
    client = connect(app)
    ready = start(client, backend="cloud", language="en")
    head = int(DROP_AT * 16000) * 2
    client.stream(clip.pcm[:head], speed=4.0)
    client.wait_for("backend_changed", timeout=10)
    client.stream(clip.pcm[head:], speed=4.0)
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=90)[0]
    assert client.named("error") == []
    events = [(e.name, e.data) for e in client.events if e.name in ("final", "backend_changed", "partial")]
    check_failover(events, clip, ready["session_id"])
    assert stopped["duration"] == pytest.approx(CLIP_END, abs=0.01)
    fake.wait_for_sessions(1)
    assert fake.sessions[0].dropped and len(fake.sessions) == 1


def test_a_failover_while_the_client_is_paused_finalises_its_last_words(serve, clip: Fixture):
    # The client pauses mid "Please enter the number to be removed from the blacklist." (11.1-
    # 14.0 s); the connection dies when the server asks for the final of the words so far.
    app, fake = serve(drop_on_force_end=True)
    client = connect(app)
    start(client, backend="cloud", language="en")
    client.stream(clip.pcm[: int(DROP_AT * 16000) * 2], speed=4.0)
    at = client.wait_for("backend_changed", timeout=15)[0]["at"]
    deadline = time.monotonic() + 20
    # The local model takes over, and the words after the last cloud final become final
    # without more audio, as they would have from the cloud.
    while not [f for f in client.named("final") if f["start"] >= at and "number" in f["text"]]:
        assert time.monotonic() < deadline, f"no final after the failover: {client.named('final')}"
        time.sleep(0.05)
    assert client.named("error") == []
    client.client.emit("stop")
    client.wait_for("stopped", timeout=30)
    assert fake.sessions[0].dropped and fake.sessions[0].forced


def test_audio_no_longer_retained_at_a_failover_is_reported(serve, clip: Fixture, monkeypatch):
    # The cloud finalises nothing after 2.3 s ("De-activated.") for longer than the server
    # keeps audio for a failover (cut to 3 s here): what was let go must be named, not lost.
    monkeypatch.setattr("server.sessions.MAX_RETAINED_SECONDS", 3.0)
    app, _ = serve(fixture=clip.clip(3.0), fail_after=DROP_AT)
    client = connect(app)
    start(client, backend="cloud", language="en")
    client.stream(clip.pcm[: int(DROP_AT * 16000) * 2], speed=4.0)
    changed = client.wait_for("backend_changed", timeout=15)[0]
    (error,) = client.wait_for("error", timeout=10)
    span = re.search(r"audio from ([\d.]+) s to ([\d.]+) s", error["message"])
    assert span and error["fatal"] is False and error["code"] == "cloud_connection_lost"
    finals = client.named("final")
    assert float(span.group(1)) == pytest.approx(finals[-1]["end"], abs=0.05)
    assert float(span.group(2)) == pytest.approx(DROP_AT - 3.0, abs=0.2) == changed["at"]
    client.client.emit("stop")
    stopped = client.wait_for("stopped", timeout=60)[0]
    assert stopped["duration"] == pytest.approx(DROP_AT, abs=0.01)


def test_no_failover_to_a_local_model_without_the_session_language(serve, fr00: Fixture):
    # tiny.en cannot transcribe French: taking over would turn the rest of the session into
    # English gibberish, so the failure is reported instead, as with failover off.
    clip = fr00.clip(22.0)
    app, fake = serve(fixture=clip, fail_after=21.0)
    client = connect(app)
    start(client, backend="cloud", language="fr")
    stream_until_error(client, clip.pcm, speed=10.0)
    stopped = client.wait_for("stopped", timeout=30)[0]
    assert client.named("backend_changed") == []
    error = client.named("error")[0]
    assert error["code"] == "cloud_connection_lost" and error["fatal"] is True
    finals = client.named("final")
    assert finals_text(finals) == stopped["transcript"]
    # The cloud's finals up to the drop, and nothing after it.
    prompts = [u["text"] for u in clip.reference["utterances"]]
    assert len(finals) >= 1 and stopped["transcript"] == " ".join(prompts[: len(finals)])
    fake.wait_for_sessions(1)
    assert fake.sessions[0].start_message["transcription_config"]["language"] == "fr"


# --- side by side ---------------------------------------------------------------------------------


def test_cloud_and_local_sessions_at_the_same_time(serve, clip: Fixture, en01: Fixture):
    app, fake = serve()
    cloud_client, local_client = connect(app), connect(app)
    cloud_ready = start(cloud_client, backend="cloud", language="en")
    local_ready = start(local_client, language="en")
    assert (cloud_ready["backend"], local_ready["backend"]) == ("cloud", "local")
    assert cloud_ready["room"] != local_ready["room"]
    local_clip = en01.clip(15.0)

    stream_together([(cloud_client, clip.pcm), (local_client, local_clip.pcm)], speed=4.0)
    cloud_client.client.emit("stop")
    local_client.client.emit("stop")
    cloud_stopped = cloud_client.wait_for("stopped", timeout=60)[0]
    local_stopped = local_client.wait_for("stopped", timeout=60)[0]

    for client, ready in ((cloud_client, cloud_ready), (local_client, local_ready)):
        assert client.named("error") == []
        finals = client.named("final")
        assert_finals_well_formed(finals)
        assert all(f["session_id"] == ready["session_id"] for f in finals)  # no cross-talk
    assert wer(clip.text, cloud_stopped["transcript"]) == 0.0
    assert wer(local_clip.text, local_stopped["transcript"]) < 0.2
    assert cloud_stopped["duration"] == pytest.approx(CLIP_END, abs=0.01)
    assert local_stopped["duration"] == pytest.approx(15.0, abs=0.01)
    fake.wait_for_sessions(1)
    assert len(fake.sessions) == 1 and fake.sessions[0].violations == []


# --- a real server process (gevent) ---------------------------------------------------------------


def test_failover_in_a_gevent_server_process(clip: Fixture):
    """``python -m server`` (gevent, WebSocket) with the key and endpoint from the environment:
    a cloud session, a drop, the switch to local, and every word in the finals."""
    with FakeSpeechmatics(utterances_of(clip), fail_after=DROP_AT) as fake:
        env = {"SPEECHMATICS_API_KEY": fake.api_key, "SPEECHMATICS_RT_URL": fake.url}
        with running_server("--model", "tiny.en", env=env) as server:
            client = Client(server.url)
            try:
                assert client.wait_for("server_info")[0]["backends"]["cloud"]["available"] is True
                client.sio.emit("start", {"backend": "cloud", "language": "en"})
                ready = client.wait_for("ready")[0]
                assert ready["backend"] == "cloud"
                client.stream(clip.pcm, speed=4.0)
                client.sio.emit("stop")
                stopped = client.wait_for("stopped", timeout=90)[0]
            finally:
                client.sio.disconnect()
        output = server.log()
        assert fake.api_key not in output  # the key stays out of the log
        # The drop is an expected failure: logged as a warning, never printed as a crash.
        assert "Traceback" not in output, output

    assert client.named("error") == []
    assert any(p["text"] for p in client.named("partial"))
    with client._lock:
        events = [(name, data) for _, name, data in client.events if name in ("final", "backend_changed", "partial")]
    check_failover(events, clip, ready["session_id"])
    assert stopped["transcript"] == finals_text(client.named("final"))
    assert fake.sessions[0].dropped and fake.sessions[0].violations == []
