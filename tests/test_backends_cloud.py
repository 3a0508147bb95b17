"""The cloud backend's stream against a fake Speechmatics real-time server on loopback."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from backends.base import Final, LanguageDetected, Partial, StreamOptions
from backends.cloud import CloudBackend, CloudBackendOptions, CloudStream, speechmatics_language, transcript_words
from backends.errors import BackendFailure, BackendUnavailable, CloudError, ConfigurationError, InvalidRequest
from bench.wer import normalize
from server.logs import FORMAT, SessionFilter, in_session
from server.protocol import join_finals
from tests.fakes.speechmatics import FakeSpeechmatics, Utterance, load_utterances, tokenize

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CHUNK = 1600  # 100 ms at 16 kHz


def read_wav(path: Path) -> np.ndarray:
    """A mono 16-bit WAV as float32 in [-1, 1)."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2 and wav.getframerate() == 16000
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, list[Utterance]]:
    """en-dev-00: 60 s of prompts, as float32 audio and its reference utterances."""
    return read_wav(FIXTURES / "en-dev-00.wav"), load_utterances(FIXTURES / "en-dev-00.json")


def backend_for(fake: FakeSpeechmatics, **options: object) -> CloudBackend:
    return CloudBackend(CloudBackendOptions(api_key=fake.api_key, url=fake.url, **options))  # type: ignore[arg-type]


def finals_of(events: list) -> list[Final]:
    return [e for e in events if isinstance(e, Final)]


def run_until_failure(stream: CloudStream, audio: np.ndarray) -> tuple[list, BackendFailure]:
    """Feed in 100 ms chunks, then flush; return the events delivered and the failure raised."""
    events: list = []
    try:
        for i in range(0, len(audio), CHUNK):
            events += stream.feed(audio[i : i + CHUNK])
        events += stream.flush()
    except BackendFailure as exc:
        return events, exc
    raise AssertionError("the stream did not fail")


# --- a normal session ----------------------------------------------------------------------


def test_session_end_to_end(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    audio, utterances = speech
    with FakeSpeechmatics(utterances, start_delay=0.2) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        events: list = []
        try:
            for i in range(0, len(audio), CHUNK):
                new = stream.feed(audio[i : i + CHUNK])
                events += new
                # committed_until follows the finals delivered, never ahead of them.
                delivered = finals_of(events)
                assert stream.committed_until == (delivered[-1].end if delivered else 0.0)
            events += stream.flush()
            assert fake.sessions[0].end_of_transcript  # flush returned after EndOfTranscript
        finally:
            stream.close()
        fake.wait_for_sessions(1)
    session = fake.sessions[0]
    assert session.violations == []
    assert session.frames_before_start == 0  # audio only after RecognitionStarted
    assert session.start_message is not None
    assert session.start_message["audio_format"] == {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
    config = session.start_message["transcription_config"]
    assert (config["language"], config["max_delay"], config["enable_partials"]) == ("en", 1.0, True)
    assert session.last_seq_no == session.frames
    assert session.audio_bytes == 2 * len(audio)

    finals = finals_of(events)
    hypothesis = " ".join(f.text for f in finals)
    assert normalize(hypothesis) == normalize(" ".join(u.text for u in utterances))
    # Each final is one reference utterance, timed in stream seconds.
    assert len(finals) == len(utterances)
    for final, utterance in zip(finals, utterances, strict=True):
        assert final.start == pytest.approx(utterance.start, abs=0.002)
        assert final.end == pytest.approx(utterance.end, abs=0.002)
        assert "".join(w.text for w in final.words).strip() == final.text
        assert all(final.start <= w.start <= w.end <= final.end for w in final.words)
    word_starts = [w.start for f in finals for w in f.words]
    assert word_starts == sorted(word_starts)
    assert [f.start for f in finals] == sorted(f.start for f in finals)
    assert stream.committed_until == finals[-1].end

    partials = [e for e in events if isinstance(e, Partial)]
    assert any(p.text for p in partials)
    # After each final the uncommitted tail is cleared, as the local pipeline does.
    for index, event in enumerate(events):
        if isinstance(event, Final):
            later = [e for e in events[index + 1 :] if isinstance(e, Partial)]
            assert later and later[0].text == ""


def test_flush_returns_the_tail_after_end_of_transcript(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    audio, utterances = speech
    cut = 8.0  # in the middle of "Please enter your phone number, starting with the area code."
    with FakeSpeechmatics(utterances) as fake:
        stream = backend_for(fake, max_delay=4.0).open_stream(StreamOptions(language="en"))
        try:
            fed: list = []
            for i in range(0, int(cut * 16000), CHUNK):
                fed += stream.feed(audio[i : i + CHUNK])
            tail = stream.flush()
        finally:
            stream.close()
    # The service finalises what it has when the stream ends, words started before the cut.
    finals = finals_of(fed + tail)
    assert [f.text for f in finals][:2] == ["De-activated.", "Press 1 for"]
    assert finals[-1].text.startswith("Please enter your phone") and finals[-1] in tail
    assert finals[-1].words[-1].start < cut < utterances[2].end
    assert stream.committed_until == finals[-1].end
    assert fake.sessions[0].violations == []


# --- refused sessions ------------------------------------------------------------------------


@pytest.mark.parametrize("reject_key", ["http", "in_band"])
def test_bad_key_is_cloud_not_authorised(reject_key: str) -> None:
    with FakeSpeechmatics(reject_key=reject_key) as fake:
        backend = CloudBackend(CloudBackendOptions(api_key="wrong-key", url=fake.url))
        with pytest.raises(CloudError) as raised:
            backend.open_stream(StreamOptions(language="en"))
    assert raised.value.code == "cloud_not_authorised"
    assert "API key" in raised.value.message and "wrong-key" not in raised.value.message
    assert raised.value.to_payload()["code"] == "cloud_not_authorised"


def test_quota_exceeded_at_start() -> None:
    with FakeSpeechmatics(quota_exceeded=True) as fake:
        with pytest.raises(CloudError) as raised:
            backend_for(fake).open_stream(StreamOptions(language="en"))
        fake.wait_for_sessions(1)
    assert raised.value.code == "cloud_quota_exceeded"
    assert fake.sessions[0].error == "quota_exceeded" and fake.sessions[0].frames == 0


def test_lines_logged_on_the_stream_thread_carry_the_session_id() -> None:
    capture = _LogCapture()
    log = logging.getLogger("backends.cloud")
    log.addHandler(capture)
    try:
        with FakeSpeechmatics(quota_exceeded=True) as fake, pytest.raises(CloudError):
            in_session("s-42", backend_for(fake).open_stream)(StreamOptions(language="en"))
    finally:
        log.removeHandler(capture)
    failed = [line for line in capture.lines if "Speechmatics session failed" in line]
    assert failed and all("session=s-42:" in line for line in failed), capture.lines


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.addFilter(SessionFilter())
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_unreachable_service() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = CloudBackend(CloudBackendOptions(api_key="k", url=f"ws://127.0.0.1:{port}/v2", connect_timeout=3.0))
    with pytest.raises(CloudError) as raised:
        backend.open_stream(StreamOptions(language="en"))
    assert raised.value.code == "cloud_unreachable"


# --- failures mid-stream -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail_with", "code"),
    [(None, "cloud_connection_lost"), ("job_error", "cloud_job_error"), ("idle_timeout", "cloud_idle_timeout")],
)
def test_failure_mid_stream(speech: tuple[np.ndarray, list[Utterance]], fail_with: str | None, code: str) -> None:
    audio, utterances = speech
    with FakeSpeechmatics(utterances, fail_after=20.0, fail_with=fail_with) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        try:
            events, failure = run_until_failure(stream, audio)
        finally:
            stream.close()
    assert isinstance(failure, CloudError) and failure.code == code
    finals = finals_of(events)
    assert finals, "finals before the failure were delivered"
    assert stream.committed_until == finals[-1].end <= 20.0
    # A failover re-feeding from committed_until loses nothing: every reference utterance is
    # either in the delivered finals or starts after committed_until.
    delivered = normalize(" ".join(f.text for f in finals))
    for utterance in utterances:
        if utterance.end <= stream.committed_until:
            assert " ".join(normalize(utterance.text)) in " ".join(delivered)
        else:
            assert utterance.start >= stream.committed_until
    with pytest.raises(CloudError):  # the stream stays failed
        stream.feed(audio[:CHUNK])


def test_connection_lost_at_the_end_fails_flush_without_waiting_for_the_timeout(
    speech: tuple[np.ndarray, list[Utterance]],
) -> None:
    audio = speech[0][: 3 * 16000]
    with FakeSpeechmatics(speech[1], fail_after=2.9) as fake:
        stream = backend_for(fake, flush_timeout=30.0).open_stream(StreamOptions(language="en"))
        try:
            events, failure = run_until_failure(stream, audio)
        finally:
            stream.close()
    assert fake.sessions[0].dropped
    assert isinstance(failure, CloudError) and failure.code == "cloud_connection_lost"  # not cloud_timeout
    finals = finals_of(events)
    assert stream.committed_until == (finals[-1].end if finals else 0.0)


def wait_for_poll(stream: CloudStream, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not stream.needs_poll:
        assert time.monotonic() < deadline, "needs_poll stayed False"
        time.sleep(0.01)


def test_poll_delivers_what_arrives_after_the_last_feed_and_raises_a_later_failure(
    speech: tuple[np.ndarray, list[Utterance]],
) -> None:
    # "De-activated." (1.16-2.26 s) is final once the fake has 2.26 + max_delay (1 s): the
    # 33rd chunk's answer, which comes back after feed() returned. The fake drops at 4 s.
    audio, utterances = speech
    with FakeSpeechmatics(utterances, fail_after=4.0) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        try:
            events: list = []
            for i in range(0, 33 * CHUNK, CHUNK):
                events += stream.feed(audio[i : i + CHUNK])
            while not finals_of(events):
                wait_for_poll(stream)
                events += stream.poll()
            assert [f.text for f in finals_of(events)] == ["De-activated."]
            assert stream.committed_until == pytest.approx(2.26, abs=0.01)
            assert not stream.needs_poll and stream.poll() == []
            for i in range(33 * CHUNK, 40 * CHUNK, CHUNK):
                stream.feed(audio[i : i + CHUNK])
            wait_for_poll(stream)  # the drop, with no feed after it
            with pytest.raises(CloudError) as failure:
                while True:  # a partial may come first
                    stream.poll()
                    time.sleep(0.01)
            assert failure.value.code == "cloud_connection_lost"
        finally:
            stream.close()
    assert not stream.needs_poll  # closed: nothing more to look for
    assert fake.sessions[0].dropped


def test_pause_asks_for_the_final_of_the_words_so_far_and_the_stream_goes_on(
    speech: tuple[np.ndarray, list[Utterance]],
) -> None:
    # The client stops at 8.0 s, inside "Please enter your phone number, starting with the
    # area code." (6.6-9.9 s): without more audio the service would hold those words (its
    # finals wait for max_delay of later audio); ForceEndOfUtterance asks for them now.
    audio, utterances = speech
    with FakeSpeechmatics(utterances) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        try:
            events: list = []
            for i in range(0, 80 * CHUNK, CHUNK):
                events += stream.feed(audio[i : i + CHUNK])
            before = len(finals_of(events))
            events += stream.pause()
            while len(finals_of(events)) <= before or not finals_of(events)[-1].text.startswith("Please"):
                wait_for_poll(stream)
                events += stream.poll()
            forced = finals_of(events)[-1]
            assert forced.start >= 6.6 and forced.words[-1].start < 8.0  # the words begun by 8 s
            assert normalize(forced.text)[:4] == normalize("Please enter your phone")
            assert stream.committed_until == forced.end
            assert fake.sessions[0].forced == [pytest.approx(8.0)]
            for i in range(80 * CHUNK, int(17.2 * 16000), CHUNK):
                events += stream.feed(audio[i : i + CHUNK])
            events += stream.flush()
        finally:
            stream.close()
    said = " ".join(f.text for f in finals_of(events))
    assert normalize(said) == normalize(" ".join(u.text for u in utterances[:5]))  # nothing lost or doubled
    assert fake.sessions[0].violations == []


def test_punctuation_finalised_apart_from_its_word_joins_it(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    # A pause inside "number," (utterance 2) finalises "number" at once; its comma, timed at
    # the word's end, comes in the next AddTranscript attached to the previous word. The
    # transcript must read "number, starting", not "number ,starting" or "number , starting".
    audio, utterances = speech
    tokens = tokenize(utterances[2])
    comma = next(i for i, t in enumerate(tokens) if t.kind == "punctuation" and t.content == ",")
    word = tokens[comma - 1]
    stop = math.floor(word.end * 10) / 10  # a chunk boundary inside the word
    assert word.start < stop < word.end
    with FakeSpeechmatics(utterances) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        try:
            events: list = []
            for i in range(0, round(stop * 16000), CHUNK):
                events += stream.feed(audio[i : i + CHUNK])
            events += stream.pause()
            while not finals_of(events) or not finals_of(events)[-1].text.endswith(word.content):
                wait_for_poll(stream)
                events += stream.poll()
            for i in range(round(stop * 16000), int(10.5 * 16000), CHUNK):  # before utterance 3
                events += stream.feed(audio[i : i + CHUNK])
            events += stream.flush()
        finally:
            stream.close()
    finals = finals_of(events)
    joined = [f for f in finals if f.joins_previous]
    assert [f.text[0] for f in joined] == [","]  # the comma's final, and only that one
    assert joined[0].words[0].text == ","
    transcript = join_finals((f.text, f.joins_previous) for f in finals)
    assert transcript == " ".join(u.text for u in utterances[:3])
    assert fake.sessions[0].violations == []


def result(content: str, start: float, end: float, attaches_to: str | None = None) -> dict:
    """One AddTranscript result: a word, or punctuation attached as ``attaches_to`` says."""
    item: dict = {"start_time": start, "end_time": end, "alternatives": [{"content": content, "confidence": 0.9}]}
    if attaches_to is None:
        item["type"] = "word"
    else:
        item.update(type="punctuation", attaches_to=attaches_to)
    return item


@pytest.mark.parametrize(
    ("results", "text", "joins"),
    [
        # "previous": no delimiter before the mark; "next": none after it.
        (
            [result("Hello", 0, 0.4), result(",", 0.4, 0.4, "previous"), result("world", 0.5, 0.9)],
            " Hello, world",
            False,
        ),
        ([result("say", 0, 0.3), result("(", 0.4, 0.4, "next"), result("it", 0.4, 0.6)], " say (it", False),
        # "both": none on either side, one word as Whisper writes it.
        ([result("well", 0, 0.3), result("-", 0.3, 0.3, "both"), result("known", 0.3, 0.7)], " well-known", False),
        # "none": a mark standing alone between delimiters.
        ([result("this", 0, 0.3), result("&", 0.4, 0.4, "none"), result("that", 0.5, 0.8)], " this & that", False),
        # Opening a transcript, a mark attached to the previous word joins the previous final.
        ([result(",", 0.4, 0.4, "previous"), result("starting", 0.5, 0.9)], ", starting", True),
        ([result("-", 0.3, 0.3, "both"), result("known", 0.3, 0.7)], "-known", True),
    ],
)
def test_transcript_words_place_the_delimiter_as_attaches_to_says(results: list, text: str, joins: bool) -> None:
    words, joined = transcript_words(results)
    assert "".join(w.text for w in words) == text
    assert joined is joins
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))  # one word per span of time


def test_a_word_glued_on_by_a_mark_attached_to_both_sides_keeps_both_times() -> None:
    words, _ = transcript_words([result("well", 0.1, 0.3), result("-", 0.3, 0.3, "both"), result("known", 0.35, 0.7)])
    assert [(w.text, w.start, w.end, w.probability) for w in words] == [(" well-known", 0.1, 0.7, 0.9)]


def test_pause_after_flush_or_close_sends_nothing(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    audio, utterances = speech
    with FakeSpeechmatics(utterances) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="en"))
        stream.feed(audio[: 10 * CHUNK])
        stream.flush()
        assert stream.pause() == []
        stream.close()
        assert stream.pause() == []
    assert fake.sessions[0].forced == []


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        CloudBackend(CloudBackendOptions(api_key="k", operating_point="turbo"))
    with pytest.raises(ConfigurationError):
        CloudBackend(CloudBackendOptions(api_key="k", max_delay=5.0))
    with pytest.raises(ConfigurationError):
        CloudBackend(CloudBackendOptions(api_key="k", default_language="xx"))


# --- languages and availability ----------------------------------------------------------------


def test_language_mapping_and_validation() -> None:
    assert speechmatics_language("zh") == "cmn"
    assert speechmatics_language("cmn") == "cmn"
    assert speechmatics_language("fr") == "fr"
    assert speechmatics_language(None) == "en"
    assert speechmatics_language("auto", default="de") == "de"
    backend = CloudBackend(CloudBackendOptions(api_key="k"))
    info = backend.info()
    assert info.available and info.device == "cloud" and info.model == "enhanced"
    assert {"en", "fr", "de", "es", "zh", "cmn"} <= set(info.languages)
    assert info.tasks == ("transcribe",)
    for language in (None, "auto", "en", "fr", "zh"):
        backend.validate(StreamOptions(language=language))
    with pytest.raises(InvalidRequest) as raised:
        backend.validate(StreamOptions(language="xx"))
    assert raised.value.code == "unsupported_language"
    with pytest.raises(InvalidRequest) as raised:
        backend.validate(StreamOptions(language="en", task="translate"))
    assert raised.value.code == "unsupported_task"


def test_unsupported_language_is_refused_before_connecting() -> None:
    with FakeSpeechmatics() as fake, pytest.raises(InvalidRequest) as raised:
        backend_for(fake).open_stream(StreamOptions(language="haw"))
    assert raised.value.code == "unsupported_language"
    assert fake.sessions == [] and fake.rejected_handshakes == 0


def test_auto_language_runs_in_the_default_language(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    audio, utterances = speech
    with FakeSpeechmatics(utterances) as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language=None))
        try:
            events = stream.feed(audio[:CHUNK])
            events += stream.flush()
        finally:
            stream.close()
    assert fake.sessions[0].start_message["transcription_config"]["language"] == "en"  # type: ignore[index]
    assert [e for e in events if isinstance(e, LanguageDetected)] == [LanguageDetected("en", 0.0)]


def test_french_session_sends_fr() -> None:
    with FakeSpeechmatics() as fake:
        stream = backend_for(fake).open_stream(StreamOptions(language="fr"))
        stream.close()  # without flush: the connection is closed all the same
        assert stream.wait_closed()
        fake.wait_for_sessions(1)
    assert fake.sessions[0].start_message["transcription_config"]["language"] == "fr"  # type: ignore[index]


def test_no_key_means_unavailable() -> None:
    backend = CloudBackend(CloudBackendOptions(api_key=None))
    info = backend.info()
    assert not info.available and info.reason == "no SPEECHMATICS_API_KEY configured"
    with pytest.raises(BackendUnavailable):
        backend.validate(StreamOptions(language="en"))
    with pytest.raises(BackendUnavailable):
        backend.open_stream(StreamOptions(language="en"))


# --- flow control --------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [1.0, 100.0])
def test_slow_acks_bound_unacknowledged_audio(speech: tuple[np.ndarray, list[Utterance]], bound: float) -> None:
    audio = speech[0][: 4 * 16000]
    with FakeSpeechmatics(ack_delay=0.3) as fake:
        stream = backend_for(fake, max_unacked_seconds=bound).open_stream(StreamOptions(language="en"))
        try:
            for i in range(0, len(audio), CHUNK):
                stream.feed(audio[i : i + CHUNK])
            stream.flush()
        finally:
            stream.close()
    outstanding_on_server = fake.sessions[0].max_unacked_bytes / 32000
    outstanding_in_client = stream.max_outstanding_samples / 16000
    if bound == 1.0:
        # At most the bound plus the chunk that crossed it.
        assert outstanding_in_client <= 1.1 + 1e-6
        assert outstanding_on_server <= 1.1 + 1e-6
    else:  # without a tight bound the same stream runs far ahead: the check above can fail
        assert outstanding_in_client > 2.0 and outstanding_on_server > 2.0


def test_stalled_acks_fail_the_stream(speech: tuple[np.ndarray, list[Utterance]]) -> None:
    audio = speech[0][: 4 * 16000]
    with FakeSpeechmatics(ack_delay=math.inf) as fake:
        stream = backend_for(fake, max_unacked_seconds=0.5, ack_timeout=0.5).open_stream(StreamOptions(language="en"))
        try:
            _, failure = run_until_failure(stream, audio)
        finally:
            stream.close()
    assert isinstance(failure, CloudError) and failure.code == "cloud_timeout"
    assert stream.max_outstanding_samples <= 0.6 * 16000


def test_a_service_that_stops_answering_fails_the_stream_of_a_paused_client(
    speech: tuple[np.ndarray, list[Utterance]],
) -> None:
    # Less audio than max_unacked_seconds: feed() never waits, and a muted client feeds no
    # more; the stream must still fail (and the session fail over) rather than wait forever.
    audio = speech[0][: 2 * 16000]
    with FakeSpeechmatics(ack_delay=math.inf) as fake:
        stream = backend_for(fake, ack_timeout=0.5).open_stream(StreamOptions(language="en"))
        try:
            for i in range(0, len(audio), CHUNK):
                stream.feed(audio[i : i + CHUNK])
            stream.pause()
            wait_for_poll(stream)
            with pytest.raises(CloudError) as failure:
                while True:  # partials may come first
                    stream.poll()
                    time.sleep(0.01)
        finally:
            stream.close()
    assert failure.value.code == "cloud_timeout"


# --- async modes: gevent, eventlet, plain threads ---------------------------------------------

ASYNC_MODE_SCRIPT = textwrap.dedent(
    """
    import sys
    mode = sys.argv[1]
    if mode == "gevent":
        from gevent import monkey
        monkey.patch_all()
    elif mode == "eventlet":
        import eventlet
        eventlet.monkey_patch()
    import json, threading, time, wave
    import numpy as np
    from backends.base import Final, StreamOptions
    from backends.cloud import CloudBackend, CloudBackendOptions

    url, key, wav_path = sys.argv[2], sys.argv[3], sys.argv[4]
    with wave.open(wav_path) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0

    def session():
        stream = CloudBackend(CloudBackendOptions(api_key=key, url=url)).open_stream(StreamOptions(language="en"))
        events = []
        try:
            for i in range(0, len(audio), 1600):
                events += stream.feed(audio[i:i + 1600])
            events += stream.flush()
        finally:
            stream.close()
            assert stream.wait_closed(5)
        return [e.text for e in events if isinstance(e, Final)], stream.committed_until

    # As the server does: the stream runs on a native thread while the event loop goes on
    # (a ticker every 10 ms must keep ticking).
    ticks = []
    if mode == "gevent":
        import gevent
        def ticker():
            while True:
                ticks.append(1)
                gevent.sleep(0.01)
        spawned, run_native = gevent.spawn(ticker), gevent.get_hub().threadpool.apply
    elif mode == "eventlet":
        import eventlet
        from eventlet import tpool
        def ticker():
            while True:
                ticks.append(1)
                eventlet.sleep(0.01)
        spawned, run_native = eventlet.spawn(ticker), lambda fn: tpool.execute(fn)
    else:
        stop = threading.Event()
        def ticker():
            while not stop.wait(0.01):
                ticks.append(1)
        threading.Thread(target=ticker, daemon=True).start()
        run_native = lambda fn: fn()
    started = time.monotonic()
    finals, committed = run_native(session)
    elapsed = time.monotonic() - started
    print(json.dumps({"finals": finals, "committed_until": committed, "ticks": len(ticks), "elapsed": elapsed}))
    """
)


@pytest.mark.parametrize("mode", ["gevent", "eventlet", "threading"])
def test_stream_under_each_async_mode(speech: tuple[np.ndarray, list[Utterance]], mode: str) -> None:
    """Monkey patching replaces threads and locks with green ones; the stream must still run
    its client on a native thread and block only the calling native thread."""
    pytest.importorskip(mode if mode != "threading" else "threading")
    utterances = speech[1]
    with FakeSpeechmatics(utterances) as fake:
        # "localhost" makes the client resolve a name, which is where a patched process differs.
        url = fake.url.replace("127.0.0.1", "localhost")
        result = subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-c",
                ASYNC_MODE_SCRIPT,
                mode,
                url,
                fake.api_key,
                str(FIXTURES / "en-dev-00.wav"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=50,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        fake.wait_for_sessions(1)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert normalize(" ".join(output["finals"])) == normalize(" ".join(u.text for u in utterances))
    assert output["committed_until"] == pytest.approx(utterances[-1].end, abs=0.002)
    # The event loop kept running while the session ran: a tick per 10 ms, give or take.
    assert output["ticks"] >= 0.3 * output["elapsed"] / 0.01
    assert fake.sessions[0].violations == []
