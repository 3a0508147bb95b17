"""Text normalisation and word error rate, dependency-free.

The English normaliser follows the spirit of Whisper's ``EnglishTextNormalizer`` in a small
form: NFKC, lowercase, bracketed text removed, contractions expanded, hyphenated words joined,
fillers dropped and English number words converted to digits (digits stay digits), so that a
reference "Press 1 for" and a hypothesis "Press one for." compare equal. British/American
spelling is out of scope. French keeps accents and splits elisions ("l'appel" -> "l appel").

The edit distance is a word-level Levenshtein with a backtrace, so callers can see which
reference words were deleted (the benchmark counts those as never finalised).
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "ErrorCounts",
    "align",
    "corpus_wer",
    "normalize",
    "ratio_interval",
    "ratio_interval_by_utterance",
    "utterance_errors",
    "wer",
    "word_errors",
]

# Whisper's normaliser drops these hesitation tokens.
FILLERS = frozenset({"hmm", "mm", "mhm", "mmm", "uh", "um"})

ONES = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
MULTIPLIERS = {"hundred": 100, "thousand": 1000}
NUMBER_WORDS = frozenset(ONES) | frozenset(TENS) | frozenset(MULTIPLIERS)

# Whole-word rewrites applied before the generic suffix rules (order matters: "won't" must not
# become "wo not").
_WORD_CONTRACTIONS = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\blet's\b", "let us"),
    (r"\by'all\b", "you all"),
    (r"\bma'am\b", "madam"),
    (r"\bain't\b", "aint"),
    (r"\bwanna\b", "want to"),
    (r"\bgonna\b", "going to"),
    (r"\bgotta\b", "got to"),
    (r"\bmr\b\.?", "mister "),
    (r"\bmrs\b\.?", "missus "),
    (r"\bms\b\.?", "miss "),
    (r"\bdr\b\.?", "doctor "),
    (r"\bok\b", "okay"),
]
# Suffix contractions, as in Whisper ("'s" becomes "is" even when possessive: both sides of a
# comparison get the same treatment, which is all WER needs).
_SUFFIX_CONTRACTIONS = [
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'s\b", " is"),
    (r"'d\b", " would"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"'m\b", " am"),
]
_CONTRACTIONS = [(re.compile(p), r) for p, r in _WORD_CONTRACTIONS + _SUFFIX_CONTRACTIONS]

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc\u0060\u00b4]")
_DASHES = re.compile(r"[\u2010\u2011\u2012\u2013\u2014\u2212]")
_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_HYPHENATED = re.compile(r"(?<=\w)-+(?=\w)")


def _strip_punctuation(text: str, keep: str = "") -> str:
    """Replace every Unicode punctuation or symbol character (except ``keep``) by a space."""
    out = []
    for ch in text:
        if ch in keep:
            out.append(ch)
        elif unicodedata.category(ch)[0] in "PS":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _join_hyphen(match: re.Match[str]) -> str:
    """A hyphen between two number tokens separates them ("1-4", "twenty-one"); anywhere else
    it joins ("de-activated" == "deactivated", "re-record" == "rerecord")."""
    text = match.string
    left = re.search(r"\w+$", text[: match.start()])
    right = re.match(r"\w+", text[match.end() :])

    def numeric(tok: str | None) -> bool:
        return tok is not None and (tok.isdigit() or tok in NUMBER_WORDS)

    if numeric(left.group(0) if left else None) and numeric(right.group(0) if right else None):
        return " "
    return ""


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Convert runs of English number words to digits: "twenty one" -> "21",
    "three hundred and five" -> "305", "one two three" -> "1 2 3". "oh" is left alone."""
    out: list[str] = []
    total = cur = 0
    last: str | None = None  # kind of the last number word in the current group
    pending_and = False

    def flush() -> None:
        nonlocal total, cur, last
        if last is not None:
            out.append(str(total + cur))
        total = cur = 0
        last = None

    for word in words:
        if word == "and" and last in ("hundred", "thousand"):
            # "one hundred and five": keep the "and" only if no number follows.
            pending_and = True
            continue
        kind = None
        if word in ONES:
            value = ONES[word]
            kind = "ones" if value < 10 else "teen"
        elif word in TENS:
            value, kind = TENS[word], "tens"
        elif word in MULTIPLIERS and last in ("ones", "teen", "tens", "hundred") and cur > 0:
            value, kind = MULTIPLIERS[word], word
        if kind is None:
            flush()
            if pending_and:
                out.append("and")
                pending_and = False
            out.append(word)
            continue
        if kind == "hundred" and last != "hundred" and cur < 100:
            cur *= 100
        elif kind == "thousand" and not total:
            total, cur = (total + cur) * 1000, 0
        elif kind in ("ones", "teen", "tens") and (
            # "twenty one", "hundred five", "thousand twenty": the group goes on; zero never
            # continues a group ("one zero" is two digits).
            (kind == "ones" and value > 0 and last in ("tens", "hundred", "thousand") and cur % 10 == 0)
            or (kind in ("teen", "tens") and last in ("hundred", "thousand") and cur % 100 == 0)
        ):
            cur += value
        else:
            flush()
            if pending_and:
                out.append("and")
            if kind in MULTIPLIERS:
                # A multiplier that cannot apply ("hundred hundred") stays a word.
                out.append(word)
                pending_and = False
                continue
            cur = value
        pending_and = False
        last = kind
    flush()
    if pending_and:
        out.append("and")
    return out


def normalize(text: str, language: str = "en") -> list[str]:
    """Normalise ``text`` for WER and return its words.

    ``language`` "en" (default) applies the English rules; "fr" keeps accents and splits
    elisions; any other language gets the language-neutral part (case, punctuation).
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHES.sub("'", text)
    text = _DASHES.sub("-", text)
    text = _BRACKETED.sub(" ", text)
    lang = (language or "en").lower().split("-")[0]
    if lang == "en":
        for pattern, replacement in _CONTRACTIONS:
            text = pattern.sub(replacement, text)
        text = text.replace("%", " percent ")
        text = _DIGIT_GROUP_COMMA.sub("", text)
        text = _HYPHENATED.sub(_join_hyphen, text)
        # Keep decimal points ("2.5"); every other punctuation mark is a word boundary.
        text = _DECIMAL_POINT.sub("\x00", text)
        text = text.replace("'", "")
        text = _strip_punctuation(text, keep="\x00").replace("\x00", ".")
        words = [w for w in text.split() if w not in FILLERS]
        return _numbers_to_digits(words)
    if lang == "fr":
        # Elisions and hyphens ("l'appel", "peut-être") separate words.
        text = text.replace("'", " ").replace("-", " ")
        return _strip_punctuation(text).split()
    text = text.replace("'", " ")
    return _strip_punctuation(text).split()


class ErrorCounts(NamedTuple):
    """Word edit counts of a hypothesis against a reference."""

    substitutions: int
    deletions: int
    insertions: int
    ref_len: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word; 0.0 when both are empty, inf when only the reference is."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.ref_len

    def __add__(self, other: object) -> ErrorCounts:  # type: ignore[override]
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(*(a + b for a, b in zip(self, other, strict=True)))


# Alignment operations: ("=", i, j) match, ("S", i, j) substitution, ("D", i, None) deletion of
# reference word i, ("I", None, j) insertion of hypothesis word j.
AlignOp = tuple[str, int | None, int | None]


def align(ref: list[str], hyp: list[str]) -> list[AlignOp]:
    """Minimum-edit alignment of two word lists (Levenshtein, unit costs).

    On ties the backtrace prefers match/substitution, then deletion, then insertion, which keeps
    aligned words diagonal where possible.
    """
    n, m = len(ref), len(hyp)
    # Full DP table: inputs are transcripts of a few hundred words, so O(n*m) ints is fine.
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        dist[i][0] = i
    for j in range(1, m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        row, prev = dist[i], dist[i - 1]
        r = ref[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (r != hyp[j - 1])
            row[j] = min(diag, prev[j] + 1, row[j - 1] + 1)
    ops: list[AlignOp] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("=" if ref[i - 1] == hyp[j - 1] else "S", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            ops.append(("D", i - 1, None))
            i -= 1
        else:
            ops.append(("I", None, j - 1))
            j -= 1
    ops.reverse()
    return ops


def _count(ops: list[AlignOp], ref_len: int) -> ErrorCounts:
    kinds = [op for op, _, _ in ops]
    return ErrorCounts(kinds.count("S"), kinds.count("D"), kinds.count("I"), ref_len)


def word_errors(reference: str, hypothesis: str, language: str = "en") -> ErrorCounts:
    """Substitutions, deletions, insertions and reference length after normalisation."""
    ref = normalize(reference, language)
    hyp = normalize(hypothesis, language)
    return _count(align(ref, hyp), len(ref))


def wer(reference: str, hypothesis: str, language: str = "en") -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after normalisation."""
    return word_errors(reference, hypothesis, language).wer


def corpus_wer(pairs: list[tuple[str, str]], language: str = "en") -> float:
    """Pooled WER over (reference, hypothesis) pairs: total errors over total reference words."""
    total = ErrorCounts(0, 0, 0, 0)
    for reference, hypothesis in pairs:
        total = total + word_errors(reference, hypothesis, language)
    return total.wer


def utterance_errors(utterances: Sequence[str], hypothesis: str, language: str = "en") -> list[int]:
    """A stream's word errors per reference utterance, so that a comparison can be resampled by
    utterance (:func:`ratio_interval`).

    The hypothesis (the stream's joined finals) is aligned with the whole reference, each
    utterance normalised on its own; a substitution or deletion counts against its reference
    word's utterance, an insertion against the utterance of the reference word before it (the
    first utterance's, before any).
    """
    ref: list[str] = []
    owner: list[int] = []
    for k, text in enumerate(utterances):
        words = normalize(text, language)
        ref += words
        owner += [k] * len(words)
    counts = [0] * len(utterances)
    if not utterances:
        return counts
    current = 0
    for op, i, _ in align(ref, normalize(hypothesis, language)):
        if i is not None:
            current = owner[i]
        if op != "=":
            counts[current] += 1
    return counts


def _ratio(errors: int, baseline: int) -> float:
    if baseline == 0:
        return 1.0 if errors == 0 else math.inf
    return errors / baseline


def ratio_interval(
    errors: Sequence[int],
    baseline: Sequence[int],
    *,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile-bootstrap interval of ``sum(errors) / sum(baseline)``.

    ``errors[k]`` and ``baseline[k]`` are two systems' word errors on the same unit (an
    utterance: :func:`utterance_errors`); units are drawn with replacement, in pairs, since
    what is hard for one system is hard for the other. Word errors cluster in a few utterances,
    so on a few hundred words a ratio of 1.25 can be two words' luck: the interval says how far
    the ratio could move on other speech of the same kind. Deterministic for a given ``seed``.
    """
    if len(errors) != len(baseline):
        raise ValueError("errors and baseline must count the same units")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if not errors:
        return math.nan, math.nan
    pairs = list(zip(errors, baseline, strict=True))
    draw = random.Random(seed).choices
    ratios = []
    for _ in range(samples):
        chosen = draw(pairs, k=len(pairs))
        ratios.append(_ratio(sum(e for e, _ in chosen), sum(b for _, b in chosen)))
    ratios.sort()
    tail = (1 - confidence) / 2
    low = ratios[int(tail * (samples - 1))]
    high = ratios[math.ceil((1 - tail) * (samples - 1))]
    return low, high


def ratio_interval_by_utterance(draws: Iterable[tuple[str, Sequence[int], Sequence[int]]]) -> tuple[float, float]:
    """:func:`ratio_interval` over files' utterances: ``draws`` holds (file, errors per
    utterance, baseline errors per utterance) for each time a file was transcribed. Utterance
    *k* of one file is one unit however many times it was drawn (sessions of a benchmark, shifted
    runs of a sweep): the draws share its audio, so they are not independent samples of speech.
    """
    units: dict[tuple[str, int], list[int]] = {}
    for file, errors, baseline in draws:
        for k, pair in enumerate(zip(errors, baseline, strict=True)):
            unit = units.setdefault((file, k), [0, 0])
            unit[0] += pair[0]
            unit[1] += pair[1]
    return ratio_interval([e for e, _ in units.values()], [b for _, b in units.values()])
