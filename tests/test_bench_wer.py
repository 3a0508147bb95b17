"""bench.wer: normalisation and word-level edit distance, on real references of the dev corpus."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from bench.wer import (
    ErrorCounts,
    align,
    corpus_wer,
    normalize,
    ratio_interval,
    utterance_errors,
    wer,
    word_errors,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dev" / "en"  # when beside the repo
FIXTURES = Path(__file__).parent / "fixtures"


def reference_texts() -> dict[str, list[str]]:
    """Utterance texts per stream id, from tests/fixtures (or the shared corpus)."""
    texts: dict[str, list[str]] = {}
    for folder in (FIXTURES, CORPUS):
        for path in sorted(folder.glob("en-dev-*.json")) if folder.is_dir() else []:
            data = json.loads(path.read_text())
            texts.setdefault(path.stem, [u["text"] for u in data["utterances"]])
    return texts


# (corpus reference, a typical Whisper tiny.en rendering of the same audio)
EQUIVALENT = [
    ("Press 1 for", "Press one for."),
    ("I am sorry, that's not a valid extension. Please try again.",
     "I'm sorry that is not a valid extension. Please try again."),
    ("De-activated.", "Deactivated."),
    ("To re-record it.", "To rerecord it."),
    ("press 3 to rerecord your message", "Press three to re-record your message."),
    ("Press 2 to change folders, press 3 for advanced options, press zero for mailbox options.",
     "Press two to change folders. Press three for advanced options. Press 0 for mailbox options."),
    ("To establish a sales partnership, press one.", "To establish a sales partnership, press 1."),
    ("If you know your party's extension, you may dial it at any time.",
     "If you know your party is extension, you may dial it at any time."),
    ("... using your touchtone keypad. Use the 7 key for Q, and the 9 key for Z.",
     "using your touchtone keypad, use the seven key for Q and the nine key for Z"),
    ("Comedian Mail. Mailbox?", "comedian mail, mailbox"),
    ("Um, thank you. Uh, call waiting.", "Thank you. Call waiting."),
    ("folder 5", "Folder five."),
    ("press twenty-one", "Press 21."),
    ("Press 1-4 now", "press one four now"),
]  # fmt: skip


@pytest.mark.parametrize(("reference", "hypothesis"), EQUIVALENT)
def test_equivalent_renderings_have_zero_wer(reference: str, hypothesis: str) -> None:
    assert wer(reference, hypothesis) == 0.0


def test_normalize_examples() -> None:
    assert normalize("I'm sorry, that's not a valid extension.") == (
        ["i", "am", "sorry", "that", "is", "not", "a", "valid", "extension"]
    )
    assert normalize("Don't, won't, can't, we'll, they've, you're, he'd") == (
        ["do", "not", "will", "not", "can", "not", "we", "will", "they", "have", "you", "are", "he", "would"]
    )
    assert normalize("one hundred and five, twenty-one, three hundred twenty") == ["105", "21", "320"]
    assert normalize("one two three zero") == ["1", "2", "3", "0"]
    # "oh" is a word, not a digit; "and" after a hundred without a number stays.
    assert normalize("oh one hundred and the") == ["oh", "100", "and", "the"]
    assert normalize("1,000 items at 2.5% [music]") == ["1000", "items", "at", "2.5", "percent"]
    assert normalize("Ｐｒｅｓｓ　ＯＮＥ") == ["press", "1"]  # NFKC folds full-width forms
    assert normalize("It’s “done” — really") == ["it", "is", "done", "really"]


def test_normalize_french_keeps_accents_and_splits_elisions() -> None:
    assert normalize("L'appel est transféré, veuillez patienter…", "fr") == (
        ["l", "appel", "est", "transféré", "veuillez", "patienter"]
    )
    assert normalize("Qu’est-ce que c'est ?", "fr") == ["qu", "est", "ce", "que", "c", "est"]
    # English rules do not apply to French: numbers and "'s" are left as they are.
    assert normalize("Appuyez sur un", "fr") == ["appuyez", "sur", "un"]


def test_exact_wer_arithmetic() -> None:
    counts = word_errors("press 1 to record your message", "press 2 to your message now")
    # 1->2 (S), "record" deleted (D), "now" inserted (I): the only 3-edit alignment.
    assert counts == ErrorCounts(substitutions=1, deletions=1, insertions=1, ref_len=6)
    assert counts.errors == 3
    assert wer("press 1 to record your message", "Press two to your message, now.") == pytest.approx(0.5)
    assert wer("a b c d", "") == 1.0
    assert wer("", "") == 0.0
    assert math.isinf(wer("", "hello"))
    assert corpus_wer([("a b c d", "a b c d"), ("e f", "e g")]) == pytest.approx(1 / 6)


def test_alignment_marks_deleted_reference_words() -> None:
    ops = align(["press", "1", "to", "accept", "this", "recording"], ["press", "1", "to", "this"])
    deleted = [i for op, i, _ in ops if op == "D"]
    assert deleted == [3, 5]
    assert [op for op, _, _ in ops].count("=") == 4


@pytest.mark.parametrize("stream_id", ["en-dev-00", "en-dev-01", "en-dev-02"])
def test_real_references_against_themselves_and_perturbed(stream_id: str) -> None:
    texts = reference_texts().get(stream_id)
    if not texts:
        pytest.skip(f"{stream_id} reference not available")
    reference = " ".join(texts)
    assert wer(reference, reference) == 0.0
    # Punctuation-free, lowercase, contractions and numbers rewritten by hand: still equal.
    assert wer(reference, reference.lower().replace(".", " ").replace(",", "")) == 0.0
    words = normalize(reference)
    # Dropping the last utterance costs exactly its words as deletions.
    last = normalize(texts[-1])
    counts = word_errors(reference, " ".join(texts[:-1]))
    assert counts == ErrorCounts(0, len(last), 0, len(words))


def test_matches_jiwer_on_random_edits() -> None:
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(7)
    vocab = ["press", "one", "to", "record", "your", "message", "pound", "key", "star", "the", "a", "of"]
    for _ in range(200):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 20))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 6)):
            action = rng.choice("sdi")
            pos = rng.randrange(len(hyp) + 1)
            if action == "i":
                hyp.insert(pos, rng.choice(vocab))
            elif hyp and pos < len(hyp):
                if action == "s":
                    hyp[pos] = rng.choice(vocab)
                else:
                    del hyp[pos]
        ref_s, hyp_s = " ".join(normalize(" ".join(ref))), " ".join(normalize(" ".join(hyp)))
        ours = word_errors(ref_s, hyp_s)
        expected = jiwer.process_words(ref_s, hyp_s) if hyp_s else None
        if expected is None:
            assert ours == ErrorCounts(0, len(ref_s.split()), 0, len(ref_s.split()))
            continue
        # Totals must agree; the S/D/I split may differ between equal-cost alignments.
        assert ours.errors == expected.substitutions + expected.deletions + expected.insertions
        assert ours.wer == pytest.approx(expected.wer)


def test_utterance_errors_name_the_utterance_each_error_is_in() -> None:
    utterances = [
        "Press 1 for",
        "Please enter the number to be removed from the blacklist.",
        "Thank you for your patience",
    ]
    # A word inserted before the first utterance and "for" heard as "4"; "blacklist" split in
    # two (a substitution and an insertion); "your" missing.
    hypothesis = (
        "Um so press one four. Please enter the number to be removed from the black list. Thank you for patience"
    )
    assert utterance_errors(utterances, hypothesis) == [2, 2, 1]
    assert utterance_errors([], "anything") == []


@pytest.mark.parametrize("stream_id", ["en-dev-00", "en-dev-01", "en-dev-02"])
def test_utterance_errors_add_up_to_the_stream_errors(stream_id: str) -> None:
    texts = reference_texts().get(stream_id)
    if not texts:
        pytest.skip(f"{stream_id} reference not available")
    rng = random.Random(3)
    for _ in range(20):
        words = " ".join(texts).split()
        for _ in range(rng.randint(0, 12)):
            pos = rng.randrange(len(words))
            action = rng.choice("sdi")
            if action == "s":
                words[pos] = rng.choice(["uh", "color", "4", "black list"])
            elif action == "d":
                del words[pos]
            else:
                words.insert(pos, rng.choice(["the", "and", "press"]))
        hypothesis = " ".join(words)
        per_utterance = utterance_errors(texts, hypothesis)
        assert len(per_utterance) == len(texts)
        assert sum(per_utterance) == word_errors(" ".join(texts), hypothesis).errors


def test_ratio_interval_is_exact_when_every_utterance_agrees() -> None:
    baseline = [0, 1, 0, 2, 1, 0, 3]
    assert ratio_interval(baseline, baseline) == (1.0, 1.0)
    assert ratio_interval([2 * b for b in baseline], baseline) == (2.0, 2.0)
    assert ratio_interval([0, 0], [0, 0]) == (1.0, 1.0)
    assert ratio_interval([1, 2], [0, 0]) == (math.inf, math.inf)
    assert all(math.isnan(v) for v in ratio_interval([], []))


def test_ratio_interval_brackets_the_ratio_and_narrows_with_more_speech() -> None:
    # The dev streams' shape: dozens of utterances (they have 38), the errors in a few; 10
    # against 8 (1.25).
    errors = [0] * 60
    baseline = [0] * 60
    for k, n in {3: 4, 10: 2, 20: 1, 31: 2, 45: 1}.items():
        errors[k] = n
    for k, n in {3: 1, 10: 2, 20: 1, 31: 2, 50: 2}.items():
        baseline[k] = n
    low, high = ratio_interval(errors, baseline)
    assert low < 1.0 < 1.25 < high  # two words' difference: no verdict either way
    assert ratio_interval(errors, baseline) == (low, high)  # deterministic
    many_low, many_high = ratio_interval(errors * 16, baseline * 16)
    assert low < many_low < 1.25 < many_high < high
    assert many_low > 1.0  # sixteen times the speech with the same pattern: a real difference
    narrow = ratio_interval(errors, baseline, confidence=0.5)
    assert low <= narrow[0] <= narrow[1] <= high


def test_ratio_interval_rejects_unpaired_counts() -> None:
    with pytest.raises(ValueError):
        ratio_interval([1, 2], [1])
    with pytest.raises(ValueError):
        ratio_interval([1], [1], confidence=1.0)
