"""The streaming pipeline for window-decoding backends (local Whisper).

Audio flows through an incremental VAD. While someone speaks, the current utterance's window is
decoded every ``step`` seconds of new audio; words two consecutive decodes agree on are committed
(:class:`~server.agreement.LocalAgreement`) and emitted as finals, the rest is the partial. When
the VAD sees the utterance end, its window is decoded once more and everything is committed at
once. Windows are trimmed at committed boundaries so they never exceed ``max_window``; silence
between utterances is dropped, so memory stays bounded however long a session runs.

The pipeline knows nothing of sockets or threads: ``feed(audio) -> events``, ``flush() -> events``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from backends.base import (
    SAMPLE_RATE,
    DecodeOptions,
    DecoderBackend,
    DecodeResult,
    Event,
    Final,
    LanguageDetected,
    Partial,
    SpeechActivity,
    Stream,
    StreamOptions,
    Word,
    word_key,
)
from backends.errors import TranscriptionError
from backends.local import encoder_frames_for
from server.agreement import LocalAgreement, continues, drop_repetitions
from server.vad import VadOptions, VoiceActivityDetector
from server.word_times import given_room

logger = logging.getLogger(__name__)

SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class PipelineOptions:
    step: float = 1.0  # seconds of new audio between decodes of an utterance
    first_step: float = 0.3  # seconds of speech before an utterance's first decode
    # Young utterances may be decoded more often (a user waits for their first words). Since a
    # pause is decoded at once (``end_probe``), finals do not need it: the default is ``step``.
    early_step: float = 1.0
    early_period: float = 3.0  # seconds of utterance during which ``early_step`` applies
    # Once a pause has lasted this long, decode at once: if the pause turns out to end the
    # utterance (the VAD says so only after ``vad.min_silence``), that decode already holds
    # the final words, so the final does not wait for a decode after the VAD's verdict.
    end_probe: float = 0.1
    max_window: float = 15.0  # hard cap on the decoded window (seconds)
    sentence_trim: float = 8.0  # past this, trim the window at a committed sentence end
    vad: VadOptions = field(default_factory=VadOptions)
    # Encoder context for streaming decodes: the window padded to ``encoder_factor`` x its
    # length, at least ``min_encoder_frames`` (10 ms frames). None/0 factor: Whisper's 30 s.
    # The floor is what stops short windows looping; above it, 1.5 cost the same accuracy as
    # 2.0 for a fifth less CPU (docs/PIPELINE.md, "The encoder's 30 s padding").
    encoder_factor: float = 1.5
    min_encoder_frames: int = 1000
    # Decode an utterance's last words (at a pause and at the end) with the full 30 s.
    final_full_context: bool = False
    prompt_words: int = 32  # committed words before the window given as the prompt
    # Seconds of earlier committed speech (silence left out) decoded in front of the window,
    # its committed text forced as the decoder's prefix: what offline Whisper hears around a
    # phrase, without decoding it again.
    context: float = 5.0
    # The same for step decodes that are not at a pause (they show partials and commit what
    # two of them agree on); None: ``context``.
    step_context: float | None = None
    # At most this much audio (context + window) per decode: the context gives way as the
    # window grows, since a decode's cost grows with its audio (encoder frames, alignment) and
    # a long window carries its own context. 0: no limit. Measured in docs/PIPELINE.md.
    max_decoded: float = 8.0
    # Agreed words commit only once they end this long before the audio does: the newest words
    # of a window change most, even when two decodes agree on them.
    commit_margin: float = 1.0
    # Nor does an agreed word commit if either decode gave it less than this probability: it and
    # the words after it wait for the pause decode, which hears what follows them ("press
    # forward to place", "forward" at 0.03, was "press 4 to place"). Measured in docs/PIPELINE.md.
    commit_probability: float = 0.3
    # ... for at most this long after ``commit_margin``: speech without a pause still commits.
    unsure_hold: float = 2.0
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    language_threshold: float = 0.5  # detection probability that locks an "auto" language
    language_max_wait: float = 6.0  # seconds of decoded windows after which the best guess locks
    beam_size: int = 1


@dataclass(frozen=True)
class _Decoded:
    """One decode's outcome: its kept words, and why any segment of it was dropped."""

    words: list[Word]
    events: list[Event]
    silent: bool = False  # a segment read as no speech
    looped: bool = False  # a segment was a repetition loop: what was said there is unknown


def _shifted(word: Word, seconds: float) -> Word:
    return Word(text=word.text, start=word.start + seconds, end=word.end + seconds, probability=word.probability)


def _text(words: list[Word]) -> str:
    return "".join(w.text for w in words).strip()


def _tail(audio: np.ndarray, words: list[Word], seconds: float) -> tuple[np.ndarray, list[Word]]:
    """At most the last ``seconds`` of ``audio`` and its ``words`` (times relative to the
    audio), cut at a word boundary so that the words account for all the speech kept."""
    too_old = len(audio) / SAMPLE_RATE - seconds
    first = next((i for i, w in enumerate(words) if w.start >= too_old), len(words))
    if first == 0:
        return audio, words
    if first == len(words):
        return audio[:0], []
    # Between the last dropped word and the first kept one, close to the latter.
    cut = max(words[first - 1].end, words[first].start - 0.1)
    return audio[int(cut * SAMPLE_RATE) :], [_shifted(w, -cut) for w in words[first:]]


class StreamingPipeline(Stream):
    """One session's local transcription stream (times: seconds since the first sample)."""

    def __init__(
        self,
        decoder: DecoderBackend,
        options: StreamOptions,
        pipeline: PipelineOptions | None = None,
        vad: VoiceActivityDetector | None = None,
    ) -> None:
        self._decoder = decoder
        self._options = options
        self._p = pipeline or PipelineOptions()
        info = decoder.info()
        self._language: str | None = options.language if info.multilingual else "en"
        self._language_locked = self._language is not None
        self._language_evidence: dict[str, float] = {}  # language -> probability x seconds
        self._language_seconds = 0.0  # window seconds decoded while detecting
        self._vad = vad or VoiceActivityDetector(self._p.vad)
        self._pad = int(self._p.vad.speech_pad * SAMPLE_RATE)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # stream sample of self._buffer[0]
        self._total = 0  # samples fed so far
        self._window_start: int | None = None  # None while nobody speaks
        self._speech_start = 0
        self._next_decode = 0  # stream sample at which the next step decode is due
        self._agreement = LocalAgreement()
        # Committed words, for the prompt (the context's words are the prefix, not the prompt).
        self._history: deque[Word] = deque(maxlen=max(1, self._p.prompt_words) + 128)
        self._window_words: list[Word] = []  # committed words inside the current window
        # The current utterance's last committed word (a trim may have moved it out of the
        # window): a final that goes on with it joins it.
        self._utterance_last: Word | None = None
        self._context_audio = np.zeros(0, dtype=np.float32)
        self._context_words: list[Word] = []  # times in seconds of self._context_audio
        self._partial = ""
        self._committed_until = 0.0
        self._shown_until = 0.0  # where the last final's last word ends, as the final showed it
        self._cut_at = 0  # stream sample where a pause last ended an utterance
        self._last_decoded = 0  # stream sample where the latest step decode's audio ended
        self._last_unusable = False  # whether that decode dropped a segment (no speech, a loop)
        self._first_decode = True  # the next step decode is its utterance's first
        self.decodes = 0  # decode calls so far (tests and benchmarks read it)

    # --- Stream ------------------------------------------------------------------------

    def feed(self, audio: np.ndarray) -> list[Event]:
        # A long batch (a worker that fell behind, the audio re-fed at a failover) goes in
        # slices of two steps: inside one, steps and trims wait for its end, and an utterance
        # it both holds and ends would be decoded whole, past the 30 s the decoder takes.
        # (45 s of speech without a pause in one batch: 94 of 136 words in 7.5 s slices, 134
        # in 2 s slices with half the decodes of real time.)
        size = max(SAMPLE_RATE, int(2 * self._p.step * SAMPLE_RATE))
        events: list[Event] = []
        try:
            for at in range(0, max(1, len(audio)), size):
                self._feed(audio[at : at + size], events)
        except TranscriptionError as exc:
            # One batch of audio can end an utterance and fail on the next: the first one's
            # finals are committed here already and must still reach the client.
            exc.events = events + exc.events
            raise
        return events

    def _feed(self, audio: np.ndarray, events: list[Event]) -> None:
        """One slice of :meth:`feed`; its events go to ``events`` as they come."""
        self._buffer = np.concatenate([self._buffer, audio]) if self._buffer.size else audio.copy()
        self._total += len(audio)
        for vad_event in self._vad.process(audio):
            if vad_event.kind == "start":
                if self._window_start is None:
                    self._begin(vad_event.sample)
            else:
                events += self._finish(min(self._total, vad_event.sample + self._pad), speech_end=vad_event.sample)
        if self._window_start is not None and self._decode_due():
            events += self._step()
        if self._window_start is None:
            self._drop_before(self._total - self._pad)

    def flush(self) -> list[Event]:
        if self._window_start is None:
            return []
        return self._finish(self._total)

    def pause(self) -> list[Event]:
        # Without audio the VAD cannot see the utterance end: end it here, where its speech
        # stopped if a pause had begun (the usual final decode, or the probe's hypothesis),
        # else at the last sample, which then counts as the end of speech.
        events: list[Event] = []
        try:
            if self._window_start is not None:
                speech_end = self._vad.pause_start
                end = self._total if speech_end is None else min(self._total, speech_end + self._pad)
                # The speech after the pause is another utterance, whose padding must not
                # reach back into this one's audio and hear its last word again.
                self._cut_at = end
                events = self._finish(end, speech_end=speech_end)
        finally:
            self._vad.end_speech()
        return events

    @property
    def buffered_seconds(self) -> float:
        """Audio held in memory (bounded by the window cap plus a step)."""
        return len(self._buffer) / SAMPLE_RATE

    @property
    def committed_until(self) -> float:
        return self._committed_until

    # --- utterances --------------------------------------------------------------------

    def _begin(self, sample: int) -> None:
        # Not before where a pause (a muted client) ended the last utterance, maybe mid-speech:
        # the padding before the next speech would hear its last word again.
        self._window_start = max(self._buffer_start, sample - self._pad, min(self._cut_at, sample))
        self._speech_start = sample
        self._next_decode = sample + int(self._p.first_step * SAMPLE_RATE)
        self._first_decode = True

    def _decode_due(self) -> bool:
        pause = self._vad.pause_start
        if pause is not None:
            probe = pause + int(self._p.end_probe * SAMPLE_RATE)
            if self._last_decoded < probe:
                # A step due earlier in the pause waits for the probe: it would decode the
                # same words, and only the probe can stand in for the final decode.
                return self._total >= probe
        return self._total >= self._next_decode

    def _step(self) -> list[Event]:
        assert self._window_start is not None
        # The first decode of an utterance is the one a user waits for, and it only shows a
        # partial: it goes without the context, whose encoder frames cost latency.
        first, self._first_decode = self._first_decode, False
        # A decode in a pause is likely the utterance's last (see ``end_probe``).
        pausing = self._vad.pause_start is not None
        # The first words of an utterance and its last (a pause) are what a user waits for:
        # they go before other streams' routine steps when the model is busy.
        urgent = first or pausing
        decoded = self._decode(self._window_start, self._total, final=pausing, context=not first, urgent=urgent)
        self._last_decoded, self._last_unusable = self._total, decoded.silent or decoded.looped
        events = decoded.events
        # A loop's words are unknown: keep the last hypothesis (and partial) rather than agree
        # with, or lose the pending words to, a decode that lost its way.
        if not decoded.looped:
            until = self._total / SAMPLE_RATE - self._p.commit_margin
            events += self._emit(
                self._agreement.insert(
                    decoded.words,
                    until=until,
                    min_probability=self._p.commit_probability,
                    unsure_until=until - self._p.unsure_hold,
                )
            )
        events += self._trim()
        young = self._total - self._speech_start < self._p.early_period * SAMPLE_RATE
        step = min(self._p.step, self._p.early_step) if young else self._p.step
        self._next_decode = self._total + int(step * SAMPLE_RATE)
        return events

    def _finish(self, end: int, speech_end: int | None = None) -> list[Event]:
        """End of an utterance at stream sample ``end``: decode its tail once, commit it all.

        When the latest step decode already reached past the end of speech (VAD reports the
        end only after ``min_silence``), its hypothesis is the tail: commit it without decoding.
        """
        if self._window_start is None:
            return []
        events: list[Event] = []
        covered = speech_end is not None and self._last_decoded >= speech_end + int(self._p.end_probe * SAMPLE_RATE)
        if covered and not self._last_unusable:
            events += self._emit(self._agreement.commit_all(), end=end / SAMPLE_RATE)
        elif end > self._window_start:
            try:
                decoded = self._decode(self._window_start, end, final=True)
                events += decoded.events
                if decoded.silent and not self._p.final_full_context:
                    # A short window padded to a few seconds reads as "no speech" more often
                    # than the same audio in Whisper's full 30 s context: check before
                    # dropping words.
                    decoded = self._decode(self._window_start, end, final=True, full_context=True)
                    events += decoded.events
            except TranscriptionError as exc:
                # The utterance is over and its words cannot be had: end it anyway (left
                # open, it would decode the silence after it, where Whisper invents words),
                # and name what it cost from its last commit.
                exc.lost_since = self._committed_until
                self._agreement.reset_pending()
                exc.events = events + self._close_utterance(end, speech=False) + exc.events
                raise
            words = decoded.words
            if decoded.looped:
                # A loop hid what was said: the last step's hypothesis is the best account of
                # the words after the decode's own (dropping them would lose speech).
                last = words[-1].end if words else 0.0
                words = words + [w for w in self._agreement.pending if w.start >= last - 0.05]
            events += self._emit(self._agreement.commit_all(words), end=end / SAMPLE_RATE)
        else:
            self._agreement.reset_pending()
        return events + self._close_utterance(end)

    def _close_utterance(self, end: int, speech: bool = True) -> list[Event]:
        """Forget the utterance that ended at ``end`` (its words are committed, or lost)."""
        assert self._window_start is not None
        events: list[Event] = []
        if self._partial:
            self._partial = ""
            events.append(Partial(text="", start=end / SAMPLE_RATE, end=end / SAMPLE_RATE))
        if speech:
            events.append(SpeechActivity(start=self._speech_start / SAMPLE_RATE, end=end / SAMPLE_RATE))
            self._remember(self._window_start, end, self._window_words)
        self._window_words = []
        self._utterance_last = None
        self._committed_until = end / SAMPLE_RATE
        self._window_start = None
        self._last_decoded, self._last_unusable = 0, False
        # Only up to this utterance's end: the same batch of audio may already hold the
        # next utterance's start, which its window (with padding) still needs.
        self._drop_before(end - self._pad)
        return events

    # --- decoding ----------------------------------------------------------------------

    def _decode(
        self,
        start: int,
        end: int,
        *,
        final: bool,
        full_context: bool = False,
        context: bool = True,
        urgent: bool = True,
    ) -> _Decoded:
        """Decode stream samples [start, end): filtered words and why segments were dropped.

        The decoded audio is the context (earlier committed speech) followed by the window;
        every committed word in it is forced as the decoder's prefix, so only new words come
        back. The prompt is the committed text before all of that.
        """
        window = self._buffer[start - self._buffer_start : end - self._buffer_start]
        offset = start / SAMPLE_RATE  # stream time of the window's start
        context_audio, context_words = self._context_audio, self._context_words
        limit = self._p.context if final or self._p.step_context is None else self._p.step_context
        if self._p.max_decoded:
            limit = min(limit, self._p.max_decoded - len(window) / SAMPLE_RATE)
        if not (context and context_words) or limit <= 0:
            context_audio, context_words = context_audio[:0], []
        elif limit < self._p.context:
            context_audio, context_words = _tail(context_audio, context_words, limit)
        lead = len(context_audio) / SAMPLE_RATE
        audio = np.concatenate([context_audio, window]) if lead else window
        # Committed words in decoded-audio time: the context's, then the window's.
        prefix = list(context_words)
        prefix += [_shifted(w, lead - offset) for w in self._window_words]
        before = [w for w in self._history if w.end <= offset + 0.01]
        before = before[: max(0, len(before) - len(context_words))]
        if full_context or (final and self._p.final_full_context) or not self._p.encoder_factor:
            frames = None
        else:
            frames = encoder_frames_for(len(audio), self._p.encoder_factor, self._p.min_encoder_frames)
        prompt = _text(before[-self._p.prompt_words :]) if self._p.prompt_words else ""
        result = self._decoder.decode(
            audio,
            DecodeOptions(
                language=self._language if self._language_locked else None,
                task=self._options.task,
                prompt=prompt or None,
                prefix=tuple(prefix),
                beam_size=self._p.beam_size,
                encoder_frames=frames,
                urgent=urgent,
            ),
        )
        self.decodes += 1
        committed = self._window_words[-1].end if self._window_words else None
        decoded = self._words(result, offset - lead, len(audio) / SAMPLE_RATE, offset, committed, prefix[-12:])
        if decoded.looped and lead:
            # After a forced context the decoder sometimes re-says it and loops ("... main
            # menu. Press four to record ..." over and over): the window alone usually does not.
            logger.debug("a decode with context looped; decoding the window alone")
            return self._decode(start, end, final=final, full_context=full_context, context=False, urgent=urgent)
        if not self._language_locked and decoded.words:
            self._detect_language(result, decoded.events)
        return decoded

    def _words(
        self,
        result: DecodeResult,
        offset: float,
        duration: float,
        window: float,
        committed: float | None,
        prefix: list[Word],
    ) -> _Decoded:
        """Timed words of a decode in stream time, hallucinations removed; and why segments
        were dropped. ``offset``: stream time of the decoded audio's start;
        ``window``: where the window starts (after the context); ``committed``: where the
        window's last committed word ends (None: none yet); ``prefix``: the last committed
        words before the decoded ones, to catch loops across the boundary."""
        not_before = window if committed is None else max(window, committed)
        p = self._p
        words: list[Word] = []
        silent = looped = False
        for segment in result.segments:
            if segment.compression_ratio > p.compression_ratio_threshold:
                logger.debug("dropped a repetitive segment: %r", segment.text)
                looped = True
                continue
            if segment.no_speech_prob > p.no_speech_threshold and segment.avg_logprob < p.log_prob_threshold:
                logger.debug("dropped a no-speech segment: %r", segment.text)
                silent = True
                continue
            for w in segment.words:
                # Words timed in the zero padding after the audio are invented.
                if w.start >= duration - 0.02 or not w.text.strip():
                    continue
                # A word that ends before the last commit is committed text said again, or
                # its alignment collapsed: text mode once re-said 30 earlier words, all timed
                # at one instant 2.6 s back, and committing them broke the finals' order.
                end = offset + min(w.end, duration)
                if committed is not None and end < committed:
                    continue
                # The last committed word (of the window, else of the context) said again:
                # same text, mostly over committed audio (a loaded run committed "Press"
                # aligned to one instant at its end, and the next decode began "Press star ..."
                # over the same sound). A word said twice in speech ("that that") lies mostly
                # after the first.
                middle = offset + (w.start + min(w.end, duration)) / 2
                said_again = not words and prefix and word_key(w.text) == word_key(prefix[-1].text)
                if said_again and middle <= not_before + 0.02:
                    continue
                # The alignment may put the first new word a little into the committed ones.
                start = max(not_before, offset + w.start)
                words.append(Word(text=w.text, start=start, end=max(start, end), probability=w.probability))
        words = drop_repetitions([*prefix, *words], keep=len(prefix))[len(prefix) :]
        return _Decoded(words, [], silent=silent, looped=looped)

    def _detect_language(self, result: DecodeResult, events: list[Event]) -> None:
        """Lock on a confident detection; otherwise accumulate evidence (probability x window
        length, as longer windows are more reliable) and lock on the best after a while."""
        if result.language_probability >= self._p.language_threshold:
            self._lock_language(result.language, result.language_probability, events)
            return
        ranked = result.language_probs or ((result.language, result.language_probability),)
        for language, probability in ranked:
            evidence = self._language_evidence.get(language, 0.0)
            self._language_evidence[language] = evidence + probability * result.duration
        self._language_seconds += result.duration
        if self._language_seconds >= self._p.language_max_wait:
            best = max(self._language_evidence, key=self._language_evidence.__getitem__)
            self._lock_language(best, self._language_evidence[best] / self._language_seconds, events)

    def _lock_language(self, language: str, probability: float, events: list[Event]) -> None:
        self._language = language
        self._language_locked = True
        events.append(LanguageDetected(language=language, probability=probability))

    # --- commits and the window ----------------------------------------------------------

    def _emit(self, committed: list[Word], end: float | None = None) -> list[Event]:
        """Finals of ``committed`` words and the partial of the rest; ``end``: where the
        utterance's audio ends, when these are its last words."""
        events: list[Event] = []
        pending = self._agreement.pending
        if committed:
            # Only within an utterance: a pause between two words makes them two words.
            joins = self._utterance_last is not None and continues(self._utterance_last, committed[0])
            self._history.extend(committed)
            self._window_words.extend(committed)
            self._utterance_last = committed[-1]
            self._committed_until = committed[-1].end
            # The words keep their decoded times inside the pipeline (commits, trims and the
            # filters compare against them); only what is shown gets room.
            after = self._shown_until
            if self._window_start is not None:
                after = max(after, self._window_start / SAMPLE_RATE)
            shown = given_room(committed, after, pending[0].start if pending else end)
            self._shown_until = shown[-1].end
            text, start, stop = _text(shown), shown[0].start, shown[-1].end
            events.append(Final(text=text, start=start, end=stop, words=tuple(shown), joins_previous=joins))
        text = _text(pending)
        if text != self._partial:
            self._partial = text
            if pending:
                events.append(Partial(text=text, start=pending[0].start, end=pending[-1].end))
            else:
                now = self._committed_until
                events.append(Partial(text="", start=now, end=now))
        return events

    def _trim(self) -> list[Event]:
        """Keep the window short: cut it at a committed sentence end, or at the cap."""
        assert self._window_start is not None
        start_time = self._window_start / SAMPLE_RATE
        length = (self._total - self._window_start) / SAMPLE_RATE
        events: list[Event] = []
        cut: float | None = None
        if length > self._p.sentence_trim:
            ends = [w.end for w in self._history if w.end > start_time + 1.0 and w.text.rstrip().endswith(SENTENCE_END)]
            cut = ends[-1] if ends else None
        if length > self._p.max_window and cut is None:
            if self._agreement.committed_end > start_time + 1.0:
                cut = self._agreement.committed_end
            else:
                # Nothing agreed in a whole window: commit what is older than 2 s rather
                # than decode an ever longer window.
                forced = self._agreement.commit_before(self._total / SAMPLE_RATE - 2.0)
                events += self._emit(forced)
                cut = forced[-1].end if forced else self._total / SAMPLE_RATE - self._p.max_window / 2
        if cut is not None:
            cut_sample = max(self._window_start, min(self._total, int(cut * SAMPLE_RATE)))
            done = [w for w in self._window_words if w.end <= cut + 0.01]
            self._remember(self._window_start, cut_sample, done)
            self._window_words = self._window_words[len(done) :]
            self._window_start = cut_sample
            self._drop_before(self._window_start)
        return events

    def _remember(self, start: int, end: int, words: list[Word]) -> None:
        """Keep committed speech [start, end) and its words as context for later decodes,
        at most ``context`` seconds of it, cut at a word boundary."""
        if self._p.context <= 0 or not words or end <= start:
            return
        shift = len(self._context_audio) / SAMPLE_RATE - start / SAMPLE_RATE
        audio = np.concatenate(
            [self._context_audio, self._buffer[start - self._buffer_start : end - self._buffer_start]]
        )
        kept = self._context_words + [_shifted(w, shift) for w in words]
        self._context_audio, self._context_words = _tail(audio, kept, self._p.context)

    def _drop_before(self, sample: int) -> None:
        if sample > self._buffer_start:
            self._buffer = self._buffer[sample - self._buffer_start :]
            self._buffer_start = sample
