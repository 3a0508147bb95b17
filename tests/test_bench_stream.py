"""bench.stream_bench: metric arithmetic on scripted events, and pacing + metrics end to end
against a small fake Socket.IO server that replays scripted partials/finals."""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
import wave
from pathlib import Path
from typing import Self

import numpy as np
import pytest

from bench import stream_bench as sb
from bench.stream_bench import SessionRecord, StreamFile, Utterance

UTTERANCES = (
    Utterance(0.5, 1.5, "Press 1 for"),
    Utterance(2.0, 2.6, "Thank you."),
)


def make_stream(tmp_path: Path, name: str = "fake-00", duration: float = 3.0, speech: bool = True) -> Path:
    """A WAV + JSON pair in the corpus format (the audio content does not matter to the fake)."""
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(int(duration * sb.SAMPLE_RATE)) * 300).astype("<i2")
    wav_path = tmp_path / f"{name}.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sb.SAMPLE_RATE)
        wav.writeframes(samples.tobytes())
    utterances = [{"start": u.start, "end": u.end, "text": u.text} for u in UTTERANCES] if speech else []
    meta = {
        "stream_id": name,
        "language": "en",
        "duration": duration,
        "kind": "speech" if speech else "silence",
        "utterances": utterances,
    }
    wav_path.with_suffix(".json").write_text(json.dumps(meta))
    return wav_path


def word(text: str, start: float, end: float) -> dict:
    return {"word": text, "start": start, "end": end, "probability": 0.9}


# --- pure metrics -------------------------------------------------------------------------------


def test_final_latency_uses_last_word_of_each_phrase() -> None:
    record = SessionRecord(stream_id="x", client=0, duration=3.0)
    record.finals = [
        # "press one" finalised at 1.2 s, "for" at 1.9 s: phrase 0 is finalised at 1.9 s.
        (1.2, {"text": "Press one", "start": 0.5, "end": 1.0,
               "words": [word(" Press", 0.5, 0.8), word(" one", 0.8, 1.0)]}),
        (1.9, {"text": " for", "start": 1.1, "end": 1.6, "words": [word(" for", 1.1, 1.6)]}),
        # A word timed in the gap 1.5..2.0 but nearer phrase 1, then phrase 1 itself.
        (2.9, {"text": " Thank you.", "start": 1.95, "end": 2.7,
               "words": [word(" Thank", 1.95, 2.3), word(" you.", 2.3, 2.7)]}),
    ]  # fmt: skip
    latencies = sb.final_latencies(record, UTTERANCES)
    assert latencies == pytest.approx([1.9 - 1.5, 2.9 - 2.6])
    words = sb.final_words(record.finals)
    assert sb.assign_words(words, UTTERANCES) == [0, 0, 0, 1, 1]
    # A word far from every phrase belongs to none.
    assert sb.assign_words([sb.TimedWord("x", 5.0, 5.2, 6.0)], UTTERANCES) == [None]


def test_final_without_words_is_spread_over_its_range() -> None:
    words = sb.final_words([(3.0, {"text": "thank you", "start": 2.0, "end": 2.6})])
    assert [w.text for w in words] == ["thank", "you"]
    assert words[0].mid == pytest.approx(2.15) and words[1].mid == pytest.approx(2.45)


def test_word_final_latency_counts_each_word_from_its_own_end() -> None:
    record = SessionRecord(stream_id="x", client=0, duration=3.0)
    record.finals = [
        # Audio time t was sent at t (relative to stream_start): "Press" (ends 0.8), "one"
        # (1.0) and "for" (1.6) all wait for the final that arrives at 1.9 s.
        (1.9, {"text": "Press one for", "start": 0.5, "end": 1.6,
               "words": [word(" Press", 0.5, 0.8), word(" one", 0.8, 1.0), word(" for", 1.1, 1.6)]}),
        # No word times: both words are dated at the final's end, 2.6 s.
        (2.9, {"text": " Thank you.", "start": 2.0, "end": 2.6}),
    ]  # fmt: skip
    assert sb.word_final_latencies(record) == pytest.approx([1.9 - 0.8, 1.9 - 1.0, 1.9 - 1.6, 0.3, 0.3])
    # The phrase metric counts phrase 0 once, from its end (1.5 s): 0.4 s, where "Press" waited 1.1 s.
    assert sb.final_latencies(record, UTTERANCES) == pytest.approx([1.9 - 1.5, 2.9 - 2.6])
    # A final with an empty ``words`` list is one without word times, not one without words.
    record.finals = [(3.0, {"text": "thank you", "start": 2.0, "end": 2.6, "words": []})]
    assert sb.word_final_latencies(record) == pytest.approx([0.4, 0.4])
    # The phrase assignment still spreads them over the final's range.
    assert [w.end for w in sb.final_words(record.finals)] == pytest.approx([2.3, 2.6])


def test_first_partial_latency_ignores_events_that_only_brush_the_phrase() -> None:
    record = SessionRecord(stream_id="x", client=0, duration=3.0)
    record.partials = [
        (0.9, {"text": "press", "start": 0.5, "end": 0.9}),
        (1.8, {"text": "", "start": 0.0, "end": 0.0}),  # a clear never counts
        (1.95, {"text": "for", "start": 1.1, "end": 2.05}),  # overlaps phrase 1 by 0.05 s only
    ]
    record.finals = [(2.4, {"text": "thank", "start": 2.0, "end": 2.3})]
    assert sb.first_partial_latencies(record, UTTERANCES) == pytest.approx([0.4, 0.4])


def test_never_finalised_counts_deleted_reference_words_only() -> None:
    # "for" substituted is finalised (wrongly); "thank you" missing is never finalised.
    assert sb.never_finalised("Press 1 for. Thank you.", "press one four") == (2, 5)
    assert sb.never_finalised("Press 1 for", "Press one for.") == (0, 3)


def test_percentile_and_summary() -> None:
    assert sb.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert sb.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90) == pytest.approx(10.0)
    assert math.isnan(sb.percentile([], 50))
    stream = StreamFile("s", "s.wav", "en", "speech", 3.0, UTTERANCES, b"")
    silence = StreamFile("q", "q.wav", "en", "silence", 2.0, (), b"")
    speech_record = SessionRecord(stream_id="s", client=0, duration=3.0)
    speech_record.finals = [
        (1.8, {"text": "Press one for", "start": 0.5, "end": 1.5,
               "words": [word("Press", 0.5, 0.8), word(" one", 0.8, 1.1), word(" for", 1.1, 1.5)]}),
    ]  # fmt: skip
    speech_record.partials = [(0.9, {"text": "press", "start": 0.5, "end": 0.9})] * 6
    silence_record = SessionRecord(stream_id="q", client=0, duration=2.0)
    silence_record.finals = [(1.0, {"text": "you", "start": 0.2, "end": 0.5})]
    metrics = [
        sb.session_metrics(speech_record, stream, offline_text="Press one for thank you"),
        sb.session_metrics(silence_record, silence, offline_text=""),
    ]
    row = sb.summarize(metrics)
    assert row["wer"] == pytest.approx(2 / 5)  # "thank you" missing
    assert row["wer_offline"] == 0.0 and math.isinf(row["wer_ratio"])
    assert row["final_latency_median"] == pytest.approx(0.3)
    # Per word, over both sessions: 1.8 - (0.8, 1.1, 1.5) on speech and, without word times,
    # 1.0 - 0.5 for the word finalised on silence.
    assert row["word_final_latency_median"] == pytest.approx(0.6)
    assert row["word_final_latency_p90"] == pytest.approx(0.91)  # 0.7 + 0.7 * (1.0 - 0.7)
    assert metrics[0]["word_final_latency"] == pytest.approx([1.0, 0.7, 0.3])
    assert row["utterances"] == 2 and row["utterances_without_final"] == 1
    assert row["never_finalised"] == pytest.approx(2 / 5)
    assert row["partials_per_final_word"] == pytest.approx(6 / 3)
    assert row["silence_words"] == 1
    assert row["audio_s"] == pytest.approx(5.0)
    row.update(streams=1, cpu_per_audio_s=None)
    table = sb.format_table([row])
    header, rule, line = table.splitlines()
    assert len(header) == len(rule) == len(line)
    assert "inf" in line and "n/a" in line and "40.0%" in line
    columns = [c.strip() for c in re.split(r"\s{2,}", header.strip())]
    assert columns[columns.index("final lat p90") + 1 :][:2] == ["word final lat med", "word final lat p90"]
    assert " 0.60 s " in line and " 0.91 s " in line
    assert row["wer_ratio_high"] == math.inf  # offline made no error: no finite bound


def test_the_ratio_interval_resamples_utterances_not_sessions() -> None:
    stream = StreamFile("s", "s.wav", "en", "speech", 3.0, UTTERANCES, b"")
    other = StreamFile("t", "t.wav", "en", "speech", 3.0, UTTERANCES, b"")

    def metrics(file: StreamFile, text: str, offline: str) -> dict:
        record = SessionRecord(stream_id=file.stream_id, client=0, duration=3.0)
        record.finals = [(2.9, {"text": text, "start": 0.5, "end": 2.6})]
        return sb.session_metrics(record, file, offline_text=offline)

    # The same two errors as offline, in the same utterance: the ratio is 1 whatever is drawn.
    same = [
        metrics(stream, "Press one four. Thank.", "Press one four. Thank."),
        metrics(other, *["Press 1 for. Thank you"] * 2),
    ]
    row = sb.summarize(same)
    assert (row["wer_ratio"], row["wer_ratio_low"], row["wer_ratio_high"]) == (1.0, 1.0, 1.0)
    # Twice offline's errors, spread over utterances: the interval brackets the ratio.
    spread = [
        metrics(stream, "Press one four. Thank.", "Press one four. Thank you."),
        metrics(other, "Press 1 for. Thank you", "Press 1 for. Thank you"),
    ]
    row = sb.summarize(spread)
    assert row["wer_ratio"] == 2.0 and row["wer_ratio_low"] == 1.0 and row["wer_ratio_high"] == math.inf
    # Four sessions of each file (--streams 4) are the same utterances: the same interval.
    assert sb.summarize(spread * 4)["wer_ratio_low"] == 1.0
    assert sb.summarize(spread * 4)["wer_ratio_high"] == math.inf
    table = sb.format_table([{**row, "streams": 1, "cpu_per_audio_s": 0.1}])
    assert " 2.00x" in table and "1.00-inf" in table


def test_plan_streams_round_robin_and_every_file() -> None:
    files = [StreamFile(f"f{i}", "", "en", "speech", 1.0, (), b"") for i in range(3)]

    def ids(plan: list[list[StreamFile]]) -> list[list[str]]:
        return [[f.stream_id for f in client] for client in plan]

    assert ids(sb.plan_streams(files, 1, False)) == [["f0", "f1", "f2"]]
    assert ids(sb.plan_streams(files, 2, False)) == [["f0", "f2"], ["f1"]]
    assert ids(sb.plan_streams(files, 4, False)) == [["f0"], ["f1"], ["f2"], ["f0"]]
    assert ids(sb.plan_streams(files, 2, True)) == [["f0", "f1", "f2"], ["f1", "f2", "f0"]]


def test_parse_streams_arg() -> None:
    assert sb.parse_streams_arg("1,4") == [1, 4]
    assert sb.build_parser().parse_args(["--streams", "1,4"]).streams == [1, 4]
    with pytest.raises(argparse.ArgumentTypeError):
        sb.parse_streams_arg("0")


def test_process_cpu_seconds_reads_proc() -> None:
    import os

    before = sb.process_cpu_seconds(os.getpid())
    if before is None:
        pytest.skip("no /proc")
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert sb.process_cpu_seconds(os.getpid()) >= before + 0.1


def test_steal_is_the_share_of_all_cpu_time_the_hypervisor_took() -> None:
    assert sb.steal_share((1000, 10), (1400, 30)) == pytest.approx(0.05)
    assert sb.steal_share(None, (1400, 30)) is None and sb.steal_share((1000, 10), (1000, 10)) is None
    ticks = sb.machine_ticks()
    if ticks is None:
        pytest.skip("no /proc/stat")
    total, steal = ticks
    assert 0 <= steal <= total
    time.sleep(0.05)
    later = sb.machine_ticks()
    assert later is not None and later[0] >= total and later[1] >= steal


class ScriptedSio:
    """A ``socketio.Client`` stand-in on a fake clock: answers start and stop at once and
    records when each audio chunk was sent; one send takes ``slow_send`` seconds."""

    def __init__(self, now: list[float], slow_chunk: int, slow_send: float) -> None:
        self.now, self.slow_chunk, self.slow_send = now, slow_chunk, slow_send
        self.handlers: dict = {}
        self.sent: list[float] = []

    def on(self, name: str, handler) -> None:
        self.handlers[name] = handler

    def emit(self, name: str, data: object = None) -> None:
        if name == "start":
            self.handlers["ready"]({"session_id": "s", "backend": "local"})
        elif name == "audio":
            self.sent.append(self.now[0])
            if len(self.sent) - 1 == self.slow_chunk:
                self.now[0] += self.slow_send
        elif name == "stop":
            self.handlers["stopped"]({"session_id": "s", "duration": 3.0})


def test_a_slow_send_delays_one_chunk_not_the_ones_after_it(tmp_path: Path, monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(sb.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    sio = ScriptedSio(now, slow_chunk=5, slow_send=0.35)
    record = sb.stream_session(sio, sb.load_stream(make_stream(tmp_path)), 0, clock=lambda: now[0])
    sent = np.array(sio.sent) - 100.0
    due = np.arange(1, 31) * 0.1  # chunk k is due once its audio has elapsed
    late = sent - due
    # Chunks 6-8 were due while chunk 5's send blocked: they go out at once, behind it; from
    # chunk 9 on the schedule holds again, as if nothing had happened.
    assert late[:6] == pytest.approx(0, abs=1e-9)
    assert late[6] == pytest.approx(0.25, abs=1e-9) and late[8] == pytest.approx(0.05, abs=1e-9)
    assert late[9:] == pytest.approx(0, abs=1e-9)
    assert record.max_send_lag == pytest.approx(0.25, abs=1e-9)
    assert record.stop_sent == pytest.approx(3.0, abs=1e-9)


# --- against a fake server ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def quick_websocket_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake (werkzeug) server never answers a websocket close frame, so the client would
    wait websocket-client's 3 s close timeout on every disconnect; shorten it in these tests."""
    import websocket

    original = websocket.WebSocket.close

    def close(
        self: websocket.WebSocket,
        status: int = websocket.STATUS_NORMAL,
        reason: bytes = b"",
        timeout: float = 3,
    ):
        return original(self, status, reason, timeout=min(timeout, 0.1))

    monkeypatch.setattr(websocket.WebSocket, "close", close)


class FakeServer:
    """Socket.IO server that answers the protocol with scripted events.

    For each utterance of ``UTTERANCES`` it sends a partial once the audio received reaches
    start + 0.3 s and a final once it reaches end + FINAL_DELAY (the last utterance's final
    only at ``stop``, with its last word missing), so the measured latencies are known.
    """

    FINAL_DELAY = 0.2

    def __init__(self) -> None:
        import socketio
        from werkzeug.serving import make_server

        self.sio = socketio.Server(async_mode="threading")
        self.chunk_arrivals: list[float] = []
        self.sessions: dict[str, dict] = {}
        self.sio.on("start", self.on_start)
        self.sio.on("audio", self.on_audio)
        self.sio.on("stop", self.on_stop)
        self.http = make_server("127.0.0.1", 0, socketio.WSGIApp(self.sio), threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()

    def on_start(self, sid: str, payload: dict) -> None:
        if payload.get("language") not in ("en", "auto"):
            error = {"code": "unsupported_language", "message": "tiny.en is English-only", "fatal": False}
            self.sio.emit("error", error, to=sid)
            return
        self.sessions[sid] = {"samples": 0, "partials": set(), "finals": set(), "segment": 0}
        self.sio.emit("ready", {"session_id": sid, "backend": "local", "model": "fake"}, to=sid)

    def final(self, sid: str, index: int, drop_last: bool = False) -> None:
        state = self.sessions[sid]
        utt = UTTERANCES[index]
        tokens = utt.text.split()[:-1] if drop_last else utt.text.split()
        step = (utt.end - utt.start) / len(utt.text.split())
        words = [word(" " + t, utt.start + i * step, utt.start + (i + 1) * step) for i, t in enumerate(tokens)]
        payload = {"session_id": sid, "segment_id": state["segment"], "text": " ".join(tokens)}
        payload.update(start=utt.start, end=words[-1]["end"], words=words)
        state["segment"] += 1
        state["finals"].add(index)
        self.sio.emit("final", payload, to=sid)
        self.sio.emit("partial", {"session_id": sid, "text": "", "start": utt.end, "end": utt.end}, to=sid)

    def on_audio(self, sid: str, data: bytes) -> None:
        self.chunk_arrivals.append(time.monotonic())
        state = self.sessions[sid]
        state["samples"] += len(data) // 2
        now = state["samples"] / sb.SAMPLE_RATE + 1e-6
        for index, utt in enumerate(UTTERANCES):
            if index not in state["partials"] and now >= utt.start + 0.3:
                state["partials"].add(index)
                partial = {"session_id": sid, "text": utt.text.split()[0], "start": utt.start, "end": now}
                self.sio.emit("partial", partial, to=sid)
            last = index == len(UTTERANCES) - 1
            if not last and index not in state["finals"] and now >= utt.end + self.FINAL_DELAY:
                self.final(sid, index)

    def on_stop(self, sid: str) -> None:
        state = self.sessions[sid]
        for index in range(len(UTTERANCES)):
            if index not in state["finals"] and state["samples"] / sb.SAMPLE_RATE >= UTTERANCES[index].end:
                self.final(sid, index, drop_last=True)
        self.sio.emit("stopped", {"session_id": sid, "duration": state["samples"] / sb.SAMPLE_RATE}, to=sid)


@pytest.mark.slow
def test_paced_session_against_fake_server(tmp_path: Path) -> None:
    stream = sb.load_stream(make_stream(tmp_path))
    assert stream.duration == pytest.approx(3.0)
    with FakeServer() as server:
        records, cpu, failures = sb.run_configuration(server.url, [stream], 1)
        arrivals = np.array(server.chunk_arrivals)
    assert failures == [] and cpu is None and len(records) == 1
    record = records[0]
    # Pacing: 30 chunks of 100 ms, chunk k on an absolute schedule. A loaded machine delays
    # arrivals (0.12 s seen on a 2-core CI VM, seven chunks late on a slower CI hour); what
    # must not happen is drift (each chunk timed from the one before) or a burst (no pacing).
    assert len(arrivals) == 30
    assert arrivals[-1] - arrivals[0] == pytest.approx(2.9, abs=0.25), arrivals  # paced, not a burst
    offsets = arrivals - arrivals[0] - np.arange(30) * 0.1
    offsets -= np.median(offsets)
    assert (np.abs(offsets) > 0.05).sum() <= 10, offsets
    assert abs(np.median(offsets[-10:]) - np.median(offsets[:10])) < 0.03, offsets
    assert record.stop_sent == pytest.approx(3.0, abs=0.08)
    assert record.stopped is not None
    # Phrase 0 final is sent once 1.5 + 0.2 s of audio arrived; phrase 1 (ends 2.6) at stop (3.0).
    latencies = sb.final_latencies(record, stream.utterances)
    assert latencies[0] == pytest.approx(0.2, abs=0.1)
    assert latencies[1] == pytest.approx(0.4, abs=0.1)
    # Per word: phrase 0's words end at 0.83, 1.17 and 1.5 s and wait for its final at 1.7 s;
    # phrase 1's "Thank" (ends 2.3 s) waits for stop (3.0 s).
    expected = [1.7 - (0.5 + 1 / 3), 1.7 - (0.5 + 2 / 3), 1.7 - 1.5, 3.0 - 2.3]
    assert sb.word_final_latencies(record) == pytest.approx(expected, abs=0.1)
    # Partials are sent once start + 0.3 s arrived (the chunk ending at or after that).
    assert sb.first_partial_latencies(record, stream.utterances) == pytest.approx([0.3, 0.3], abs=0.1)
    metrics = sb.session_metrics(record, stream, offline_text="Press one for. Thank you.")
    assert metrics["never_finalised"] == 1 and metrics["ref_words"] == 5  # "you" dropped at stop
    assert metrics["errors"] == {"substitutions": 0, "deletions": 1, "insertions": 0, "ref_len": 5}


@pytest.mark.slow
def test_main_against_fake_server_prints_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_stream(tmp_path, "fake-00")
    make_stream(tmp_path, "fake-silence", duration=1.0, speech=False)
    out = tmp_path / "bench.json"
    with FakeServer() as server:
        # One client streaming both files, then two concurrent clients with one file each.
        code = sb.main([str(tmp_path), "--url", server.url, "--streams", "1,2", "--no-offline", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "command:" in text and "machine:" in text
    # The machine's speed at the time, measured on the real encoder (runs drift with the VM).
    assert re.search(r"^speed: +tiny.en encoder, 1000 frames on 1 thread: \d+ ms", text, re.M), text
    table = text.split("\n\n")[-1].strip().splitlines()
    assert table[0].split()[0] == "streams" and len(table) == 4
    assert "final lat p90  word final lat med  word final lat p90" in table[0]
    assert [line.split()[0] for line in table[2:]] == ["1", "2"]
    data = json.loads(out.read_text())
    assert data["speed"].startswith("tiny.en encoder")
    assert [c["streams"] for c in data["configurations"]] == [1, 2]
    assert sorted(r["client"] for r in data["configurations"][1]["records"]) == [0, 1]
    for configuration in data["configurations"]:
        summary = configuration["summary"]
        assert summary["silence_words"] == 0
        assert summary["wer"] == pytest.approx(0.2)  # one word of five dropped at stop
        assert summary["never_finalised"] == pytest.approx(0.2)
        assert summary["cpu_per_audio_s"] is None
        # The words of the test above: the median of 0.87, 0.53, 0.2 and 0.7 s.
        assert summary["word_final_latency_median"] == pytest.approx(0.62, abs=0.1)
        assert sorted(s["stream_id"] for s in configuration["sessions"]) == ["fake-00", "fake-silence"]


def test_server_is_up_falls_back_to_socketio_when_there_is_no_health() -> None:
    with FakeServer() as server:
        assert sb.server_is_up(server.url)  # the fake has no /health: 404, then a Socket.IO connect
    assert not sb.server_is_up(f"http://127.0.0.1:{sb.free_port()}")


def test_refused_start_fails_fast(tmp_path: Path) -> None:
    stream = sb.load_stream(make_stream(tmp_path))
    with FakeServer() as server:
        started = time.monotonic()
        records, _, failures = sb.run_configuration(server.url, [stream], 1, language="fr", ready_timeout=30)
    assert records == [] and len(failures) == 1 and "unsupported_language" in failures[0]
    assert time.monotonic() - started < 10


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_busy_neighbours_keep_cores_busy_while_the_block_runs_and_are_gone_after() -> None:
    with sb.busy_neighbours(2) as procs:
        assert len(procs) == 2
        time.sleep(0.5)
        # Each one burns CPU (user time well past zero: it is not sleeping).
        used = [float(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[11]) for p in procs]
        assert all(ticks > 0 for ticks in used)
    assert all(p.poll() is not None for p in procs)
    assert not any(Path(f"/proc/{p.pid}").exists() for p in procs)
    with sb.busy_neighbours(0) as none:
        assert none == []
