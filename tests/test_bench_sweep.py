"""bench.pipeline_sweep: the simulated clock behind its latency columns, and its error listing."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest

from backends.base import StreamOptions
from bench.pipeline_sweep import (
    DecodeCost,
    ModeledBackend,
    error_list,
    fit_cost,
    latencies,
    ratio_bounds,
    simulate,
)
from bench.wer import word_errors
from server.pipeline import StreamingPipeline
from tests.test_pipeline import LaggingVad, ScriptedDecoder, ramp


class Clock:
    """A clock that moves only when told: the simulation then counts just the declared costs,
    whatever this machine's speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowDecoder(ScriptedDecoder):
    """Takes ``seconds`` per decode on ``clock``, like a model."""

    def __init__(self, seconds: float, clock: Clock) -> None:
        super().__init__()
        self.seconds = seconds
        self.clock = clock

    def decode(self, audio, options):
        self.clock.now += self.seconds
        return super().decode(audio, options)


class Recording:
    """A stream that records the batches it is fed and takes ``cost`` seconds per feed."""

    def __init__(self, cost: float, clock: Clock) -> None:
        self.cost = cost
        self.clock = clock
        self.batches: list[int] = []

    def feed(self, audio: np.ndarray) -> list:
        self.batches.append(len(audio))
        self.clock.now += self.cost
        return [len(self.batches)]

    def flush(self) -> list:
        return []


def test_a_slow_feed_makes_the_next_one_a_batch_of_what_piled_up():
    clock = Clock()
    stream = Recording(cost=0.25, clock=clock)
    events = simulate(stream, np.zeros(16000, np.float32), 0.1, clock=clock)  # ten 100 ms chunks
    # Chunk 1 exists at 0.1 s and takes 0.25 s: chunks 2-3 exist by then, and so on.
    assert sum(stream.batches) == 16000
    assert stream.batches[0] == 1600 and max(stream.batches) >= 3 * 1600
    arrivals = [t for t, _ in events]
    assert arrivals == sorted(arrivals)
    assert arrivals[0] == pytest.approx(0.35)


@pytest.mark.parametrize("cost", [0.0, 0.2])
def test_final_latency_is_the_vad_wait_plus_the_decode_time(cost):
    clock = Clock()
    decoder = SlowDecoder(cost, clock)
    pipeline = StreamingPipeline(decoder, StreamOptions(language="en"), vad=LaggingVad([(1.0, 4.0)]))
    events = simulate(pipeline, ramp(6.0), 0.1, clock=clock)
    finals, firsts, _ = latencies(events, [{"start": 1.0, "end": 4.0, "text": "x"}], shift=0.0)
    # The pause is decoded 0.1 s in (taking ``cost``); the VAD confirms the end at 4.3 s,
    # and the final goes out then, or once that decode is done.
    assert finals[0] == pytest.approx(max(0.3, 0.1 + cost) + 0.1, abs=0.01)
    # The first decode runs after 0.3 s of speech and shows the first words.
    assert firsts[0] == pytest.approx(0.3 + cost, abs=0.01)


def test_word_final_latency_is_each_words_wait_on_the_simulated_clock():
    from backends.base import Final, Partial, Word

    # On the simulated clock audio time t exists at t: a final returned at 2.5 s holding words
    # that end at 1.2 and 2.0 s kept them waiting 1.3 and 0.5 s. A final without word times
    # dates its words at its own end (3.4 s). Partials are not finals.
    events = [
        (1.5, Partial("hello", 1.0, 1.4)),
        (2.5, Final("hello world", 1.0, 2.0, (Word("hello", 1.0, 1.2), Word(" world", 1.3, 2.0)))),
        (3.9, Final("thank you", 3.0, 3.4)),
    ]
    # With --shifts the events' times are in the shifted audio already; only the references move.
    utterances = [{"start": 0.6, "end": 1.7, "text": "hello world"}, {"start": 2.7, "end": 3.2, "text": "thank you"}]
    finals, firsts, words = latencies(events, utterances, shift=0.37)
    assert words == pytest.approx([1.3, 0.5, 0.5, 0.5])
    assert finals == pytest.approx([2.5 - 2.07, 3.9 - 3.57])  # per phrase, from the shifted ends
    assert firsts == pytest.approx([1.5 - 0.97, 3.9 - 3.07])


def test_the_error_listing_names_each_word_the_wer_counts():
    # Normalised as the WER counts them: "1" and "one" match, case and punctuation do not count.
    assert error_list("Dial 1 if you wish this caller", "Dial one if you wish this color.") == ["caller>color"]
    assert error_list("Login incorrect. Mailbox?", "Login and correct. Mailbox.") == ["+and", "incorrect>correct"]
    assert error_list("Goodbye!", "") == ["-goodbye"]
    assert error_list("Press star.", "press star") == []
    assert (
        len(error_list("Login incorrect. Mailbox?", "Login and correct."))
        == word_errors("Login incorrect. Mailbox?", "Login and correct.").errors
    )


def test_ratio_bounds_pair_each_draw_with_the_baselines_draw_of_the_same_file():
    utterances = {"a": ["Login incorrect.", "Mailbox?"], "b": ["Press star.", "Goodbye!"]}
    right = {"a": "Login incorrect. Mailbox?", "b": "Press star. Goodbye!"}
    baseline = [("a", "Login and correct. Mailbox?"), ("b", "Press star. Goodbye!")]
    # The same errors in the same utterance: 1 whatever is drawn.
    assert ratio_bounds(list(baseline), baseline, utterances) == (1.0, 1.0)
    # Two more errors where the baseline has none ("Mail box"): a draw of four utterances
    # without "Login incorrect" but with "Mailbox" has no finite ratio; one with neither, 1.
    doubled = [("a", "Login and correct. Mail box?"), ("b", "Press star. Goodbye!")]
    assert ratio_bounds(doubled, baseline, utterances) == (1.0, math.inf)
    # Two draws of each file (--shifts 2) pair in order, and the two draws of an utterance are
    # one unit: 2 errors against 4 wherever it is drawn (as two units: 0/2 and 2/2, so 0.0 too).
    two = [baseline[0], ("a", right["a"]), baseline[1], baseline[1]]
    assert ratio_bounds(two, [baseline[0], baseline[0], baseline[1], baseline[1]], utterances) == (0.5, 1.0)
    with pytest.raises(AssertionError):
        ratio_bounds(doubled, list(reversed(baseline)), utterances)


class JitteryDecoder(ScriptedDecoder):
    """Takes a random few milliseconds of real time per decode, as a loaded machine does."""

    def decode(self, audio, options):
        time.sleep(random.uniform(0.0, 0.005))
        return super().decode(audio, options)


def test_the_cost_model_grows_with_the_encoder_input_the_prefix_and_the_output():
    cost = DecodeCost()
    short = cost(audio_seconds=2.0, frames=1000, prefix_chars=0, output_chars=20)
    assert 0.1 < short < 0.3  # a 2 s window: about what it takes on one thread here
    assert cost(2.0, 2000, 0, 20) > 2 * short  # the encoder is quadratic in its frames
    assert cost(2.0, 1000, 100, 20) > short and cost(2.0, 1000, 0, 120) > short
    assert DecodeCost(base=-1.0)(1.0, 100, 0, 0) == 0.01  # never free, never negative


def test_a_modeled_clock_repeats_a_run_exactly_whatever_the_decodes_take():
    runs = []
    for _ in range(2):
        decoder = ModeledBackend(JitteryDecoder())
        pipeline = StreamingPipeline(decoder, StreamOptions(language="en"), vad=LaggingVad([(1.0, 4.0), (5.0, 7.5)]))
        runs.append(simulate(pipeline, ramp(9.0), 0.1, clock=decoder))
    assert runs[0] == runs[1]
    # Each decode moved the clock by its modeled cost (a 1000-frame encoder input: over 0.1 s),
    # not by the few milliseconds it really took.
    assert pipeline.decodes >= 4 and decoder.now > 0.1 * pipeline.decodes


def test_fit_cost_finds_the_model_behind_measured_decode_times():
    true = DecodeCost(base=0.02, per_kframe=0.1, per_kframe2=0.03, per_audio_second=0.01)
    rng = random.Random(0)
    samples = []
    for _ in range(200):
        audio, frames = rng.uniform(0.5, 8.0), rng.choice((1000, 1200, 1400, 2000, 3000))
        prefix, output = rng.randrange(0, 200), rng.randrange(0, 120)
        samples.append((audio, frames, prefix, output, true(audio, frames, prefix, output)))
    fitted, residual = fit_cost(samples)
    assert residual < 1e-9
    for name in ("base", "per_kframe", "per_kframe2", "per_audio_second", "per_prefix_char", "per_output_char"):
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), abs=1e-9)


class DeafDecoder(ScriptedDecoder):
    """Hears nothing: every decode comes back without a word."""

    def decode(self, audio, options):
        from backends.base import DecodeResult

        self.calls += 1
        return DecodeResult(segments=(), language="en", language_probability=1.0, duration=len(audio) / 16000)


def test_utterances_without_a_final_are_counted_not_left_out_silently():
    # The latency percentiles can only use utterances that got a final: a setting that
    # finalises fewer must show it, not look faster for it.
    import json

    from bench.pipeline_sweep import run_one
    from tests.conftest import FIXTURES

    path = FIXTURES / "en-dev-01.wav"
    utterances = json.loads(path.with_suffix(".json").read_text())["utterances"]
    row = run_one(DeafDecoder(), [path], {}, 0.1)
    assert row["no_final"] == row["no_partial"] == len(utterances)
    assert math.isnan(row["final_lat_med"])
    assert math.isnan(row["word_final_med"]) and math.isnan(row["word_final_p90"])  # no word finalised
