"""server.vad: incremental Silero VAD on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from server.vad import FRAME, SileroStream, VadOptions, VoiceActivityDetector
from tests.conftest import Fixture


def events_for(audio: np.ndarray, chunk: int, options: VadOptions | None = None) -> list[tuple[str, float]]:
    vad = VoiceActivityDetector(options)
    events = []
    for i in range(0, len(audio), chunk):
        events += [(e.kind, e.sample / 16000) for e in vad.process(audio[i : i + chunk])]
    return events


def test_streaming_probabilities_equal_whole_file_run(en00: Fixture):
    from faster_whisper.vad import get_vad_model

    audio = en00.audio[: 20 * 16000]
    whole = get_vad_model()(audio[: len(audio) // FRAME * FRAME]).reshape(-1)
    stream = SileroStream()
    pieces = [stream(audio[i : i + 1600]) for i in range(0, len(audio), 1600)]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-5)


def test_utterances_match_the_reference_times(en00: Fixture):
    events = events_for(en00.audio, 1600)
    starts = [t for kind, t in events if kind == "start"]
    ends = [t for kind, t in events if kind == "end"]
    assert len(starts) >= len(ends) >= len(starts) - 1
    for utterance in en00.reference["utterances"]:
        # Every reference phrase begins within 0.15 s of a detected start or inside speech.
        assert any(abs(s - utterance["start"]) < 0.15 for s in starts) or any(
            s < utterance["start"] < e for s, e in zip(starts, ends, strict=False)
        ), utterance
        # ... and is over by the time speech is declared ended.
        assert any(abs(e - utterance["end"]) < 0.3 for e in ends), utterance


@pytest.mark.parametrize("chunk", [512, 1600, 4000, 16000])
def test_events_do_not_depend_on_chunk_size(en00: Fixture, chunk: int):
    audio = en00.audio[: 20 * 16000]
    assert events_for(audio, chunk) == events_for(audio, 1600)


def test_silence_and_noise_are_not_speech(silence: Fixture):
    assert events_for(silence.audio, 1600) == []


def test_min_silence_controls_splitting(en00: Fixture):
    audio = en00.audio[: 20 * 16000]
    fine = [e for e in events_for(audio, 1600, VadOptions(min_silence=0.3)) if e[0] == "end"]
    coarse = [e for e in events_for(audio, 1600, VadOptions(min_silence=1.2)) if e[0] == "end"]
    assert len(coarse) < len(fine)


def test_a_pause_shows_before_the_end_is_reported(en00: Fixture):
    vad = VoiceActivityDetector()
    audio = en00.audio[: 20 * 16000]
    pause_seen: list[int] = []  # pause_start while each end was still pending
    for i in range(0, len(audio), 512):
        for event in vad.process(audio[i : i + 512]):
            if event.kind == "end":
                # The end is where the pause began, which was visible before the verdict.
                assert pause_seen and pause_seen[-1] == event.sample
                assert vad.pause_start is None
        if vad.pause_start is not None:
            pause_seen.append(vad.pause_start)
            assert vad.in_speech and vad.pause_start <= i + 512
    ends = [t for kind, t in events_for(audio, 1600) if kind == "end"]
    assert ends and len(set(pause_seen)) >= len(ends)


def test_end_speech_lets_the_next_speech_frame_start_again(en00: Fixture):
    # A gap in the audio (the client paused) ends the speech without a silence: the speech
    # after it starts a new utterance at its first frame, and the end comes as usual.
    audio = en00.audio[: 20 * 16000]
    vad = VoiceActivityDetector()
    first_start = next(e for i in range(0, len(audio), 1600) for e in vad.process(audio[i : i + 1600]))
    assert first_start.kind == "start" and vad.in_speech
    vad.end_speech()
    assert not vad.in_speech and vad.pause_start is None
    resumed = vad.process(audio[vad.samples_scored : vad.samples_scored + 8000])
    assert resumed and resumed[0].kind == "start"
