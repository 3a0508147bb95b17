"""Build a held-out English corpus, in the dev corpus format, from Asterisk prompts the dev streams do not use.

Fetches the Debian packages asterisk-core-sounds-en-wav (8 kHz prompts, voice en_US_f_Allison) and
asterisk-core-sounds-en (their transcripts), checks their sha256, unpacks them in pure Python (ar +
tar), keeps the top-level spoken prompts the dev streams do not use, resamples them to 16 kHz,
trims their silence (10 ms frames below -45 dBFS RMS, 30 ms margin kept) and joins random prompts,
each used once, with 0.4-1.5 s of silence into ~60 s streams: DIR/en-heldout-NN.wav (16 kHz mono
s16) with DIR/en-heldout-NN.json beside it ({"language", "duration", "utterances": [{"start",
"end", "text", "source"}], ...}; start/end are where the speech begins and ends), and
DIR/ATTRIBUTION.md. The same seed gives the same corpus.

    python -m bench.corpus                                 # 12 streams, ~/.cache/livescribe/bench/corpus/en-heldout
    python -m bench.corpus --out DIR --streams 12 --seed 0
    python -m bench.corpus --debs DIR                      # offline: the two .deb files already in DIR
    python -m bench.stream_bench ~/.cache/livescribe/bench/corpus/en-heldout
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import urllib.request
import wave
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.wer import normalize

REPO = Path(__file__).resolve().parent.parent

DEBIAN_POOL = "http://deb.debian.org/debian/pool/main/a/asterisk-core-sounds/"
WAV_DEB = "asterisk-core-sounds-en-wav_1.6.1-1_all.deb"
TEXT_DEB = "asterisk-core-sounds-en_1.6.1-1_all.deb"
DEB_SHA256 = {
    WAV_DEB: "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
    TEXT_DEB: "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
}
VOICE = "en_US_f_Allison"
SOUNDS_DIR = f"usr/share/asterisk/sounds/{VOICE}/"
TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"

RATE = 16000
FRAME = 0.010  # s, energy frames of the silence trimming
SILENCE_DBFS = -45.0  # frame RMS at or below this (1.0 = full scale) is silence
MARGIN = 0.030  # s of audio kept around the speech
MIN_SPEECH = 0.3  # s, shorter prompts are skipped
LEAD = 1.0  # s before the first speech of a stream
TAIL = 1.0  # s after the last
PAUSE = (0.4, 1.5)  # s between one prompt's speech and the next's, uniform
SLACK = 3.0  # s a stream may run past --duration
# Transcripts of tones and notes rather than speech: "[ascending tones]", "<beep ascending>",
# "IAX (note: does not say "2")", "... (simple tone sound plays)".
NON_SPEECH = "[<("
PREFIX = "en-heldout"
# The prompts of the dev streams (../shared/corpus/dev/en), left out wherever that folder is
# missing, so that every checkout builds the same held-out set.
DEV_PROMPTS = frozenset(
    {
        "agent-incorrect",
        "basic-pbx-ivr-main",
        "call-waiting",
        "conf-now-muted",
        "conf-otherinparty",
        "confbridge-begin-glorious-a",
        "confbridge-pin",
        "confbridge-unlocked",
        "de-activated",
        "dir-usingkeypad",
        "enabled",
        "entr-num-rmv-blklist",
        "from-unknown-caller",
        "if-correct-press",
        "invalid",
        "is-in-use",
        "please-try-call-later",
        "pls-hold-while-try",
        "privacy-prompt",
        "privacy-thankyou",
        "queue-thankyou",
        "to-call-this-number",
        "to-listen-to-it",
        "to-rerecord-it",
        "vm-Cust1",
        "vm-Family",
        "vm-INBOX",
        "vm-enter-num-to-call",
        "vm-leavemsg",
        "vm-login",
        "vm-nobodyavail",
        "vm-onefor",
        "vm-options",
        "vm-opts",
        "vm-review",
        "vm-review-nonurgent",
        "vm-tocancel",
        "vm-youhave",
    }
)

ATTRIBUTION = """\
# Attribution

The speech in this corpus is derived from the **Asterisk core sound prompts**
(Debian packages `asterisk-core-sounds-en-wav` and `asterisk-core-sounds-en` 1.6.1-1; transcripts
from `core-sounds-en.txt.gz`), licensed under **Creative Commons Attribution-ShareAlike 3.0
(CC-BY-SA-3.0)**, <https://creativecommons.org/licenses/by-sa/3.0/>.

* English (en_US_f_Allison) prompts: voice of **Allison Smith**.
* Prompts and transcripts: Copyright Digium, Inc. / the Asterisk project contributors.

Changes made: prompts were resampled from 8 kHz to 16 kHz, their leading and trailing silence
trimmed, and they were concatenated with silences of random length (0.4-1.5 s) into ~60 s
streams (`python -m bench.corpus`, seed {seed}). Transcript whitespace was collapsed. This derived
corpus is distributed under the same license, CC-BY-SA-3.0.
"""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livescribe" / "bench"


# --- the Debian packages --------------------------------------------------------------------------


def read_ar(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each member of an ``ar`` archive, the container of a .deb."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"bad ar member header at byte {pos}")
        name = header[:16].decode("ascii").rstrip()
        size = int(header[48:58].decode("ascii"))
        body = data[pos + 60 : pos + 60 + size]
        if len(body) < size:
            raise ValueError(f"ar member {name!r} is truncated")
        if name.startswith("#1/"):  # BSD: the name's length here, the name before the content
            length = int(name[3:])
            name, body = body[:length].decode().rstrip("\0"), body[length:]
        elif name.endswith("/") and name.strip("/"):  # GNU: "data.tar.xz/"
            name = name[:-1]
        yield name, body
        pos += 60 + size + (size & 1)  # members start on even offsets


def deb_files(deb: bytes, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The regular files of a .deb's ``data.tar.*`` whose path (``usr/share/...``) ``wanted`` accepts."""
    data = next((body for name, body in read_ar(deb) if name.startswith("data.tar")), None)
    if data is None:
        raise ValueError("no data.tar member in the .deb")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            path = member.name.removeprefix("./")
            if member.isfile() and wanted(path):
                files[path] = tar.extractfile(member).read()
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get_deb(name: str, debs: Path | None, cache: Path) -> bytes:
    """The .deb ``name``: from ``debs`` if given, else the cache, else downloaded; sha256 checked."""
    expected = DEB_SHA256[name]
    path = (debs or cache) / name
    if debs is not None and not path.is_file():
        raise SystemExit(f"{path}: not found (--debs needs {' and '.join(DEB_SHA256)})")
    data = path.read_bytes() if path.is_file() else b""
    if debs is None and sha256(data) != expected:
        url = DEBIAN_POOL + name
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
        if sha256(data) == expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".part").write_bytes(data)
            path.with_suffix(".part").replace(path)
    if sha256(data) != expected:
        raise SystemExit(f"{name}: sha256 {sha256(data)}, expected {expected}")
    return data


# --- prompt selection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    name: str  # "vm-options", as in the transcript file
    text: str

    @property
    def source(self) -> str:
        return f"{VOICE}/{self.name}.wav"


def parse_transcripts(text: str) -> dict[str, str]:
    """``name: Transcript text.`` lines to {name: text}; ``;`` comments and blank lines skipped.

    Names keep their folder (``digits/1``); runs of whitespace in the text become one space.
    """
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, transcript = line.partition(":")
        if sep and name.strip():
            out[name.strip()] = " ".join(transcript.split())
    return out


def default_exclude_files(repo: Path = REPO) -> list[Path]:
    """The dev references: ``<repo>/../shared/corpus/dev/en/*.json`` (when there) and tests/fixtures/en-*.json."""
    shared = repo.parent / "shared" / "corpus" / "dev" / "en"
    return sorted(shared.glob("*.json")) + sorted((repo / "tests" / "fixtures").glob("en-*.json"))


def used_sources(paths: Iterable[Path]) -> set[str]:
    """Every ``utterances[].source`` of these corpus JSON files (folders: their ``*.json``)."""
    sources = set()
    for path in paths:
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            data = json.loads(file.read_text())
            sources.update(u["source"] for u in data.get("utterances", []) if u.get("source"))
    return sources


def select_prompts(transcripts: dict[str, str], available: Iterable[str], exclude: set[str]) -> list[Prompt]:
    """Spoken top-level prompts that have audio (``available`` names) and are not in ``exclude`` (sources).

    Prompts in folders (digits/, letters/, ...), empty transcripts and transcripts of tones or notes
    (``[``, ``<``, ``(``) are left out. Sorted by name.
    """
    have = set(available)
    prompts = []
    for name, text in sorted(transcripts.items()):
        prompt = Prompt(name, text)
        if "/" in name or name not in have or prompt.source in exclude:
            continue
        if text and not any(mark in text for mark in NON_SPEECH):
            prompts.append(prompt)
    return prompts


# --- audio ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A prompt's audio, trimmed to its speech plus the margin."""

    prompt: Prompt
    pcm: np.ndarray  # int16, 16 kHz
    speech_start: int  # samples into pcm
    speech_end: int

    @property
    def speech_samples(self) -> int:
        return self.speech_end - self.speech_start


def decode(wav: bytes) -> np.ndarray:
    """A WAV file's audio as float32 16 kHz mono (faster-whisper's PyAV decoder and resampler)."""
    from faster_whisper.audio import decode_audio

    return decode_audio(io.BytesIO(wav), sampling_rate=RATE)


def speech_bounds(audio: np.ndarray, rate: int = RATE, threshold_dbfs: float = SILENCE_DBFS) -> tuple[int, int] | None:
    """Start and end (exclusive) sample of the span from the first to the last loud 10 ms frame.

    A frame is loud when its RMS (full scale 1.0) is above ``threshold_dbfs``. None when none is.
    """
    frame = round(FRAME * rate)
    frames = -(-len(audio) // frame)
    padded = np.zeros(frames * frame, np.float64)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(frames, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    if not loud.size:
        return None
    return int(loud[0]) * frame, min(len(audio), int(loud[-1] + 1) * frame)


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def make_clip(prompt: Prompt, audio: np.ndarray, rate: int = RATE) -> Clip | None:
    """``audio`` (float, full scale 1.0) trimmed to its speech with the margin; None under MIN_SPEECH."""
    bounds = speech_bounds(audio, rate)
    if bounds is None or bounds[1] - bounds[0] < MIN_SPEECH * rate:
        return None
    margin = round(MARGIN * rate)
    lo, hi = max(0, bounds[0] - margin), min(len(audio), bounds[1] + margin)
    return Clip(prompt, to_int16(audio[lo:hi]), bounds[0] - lo, bounds[1] - lo)


# --- streams --------------------------------------------------------------------------------------


@dataclass
class Stream:
    stream_id: str
    pcm: np.ndarray  # int16, 16 kHz
    utterances: list[dict]

    @property
    def duration(self) -> float:
        return len(self.pcm) / RATE

    @property
    def words(self) -> int:
        return sum(len(normalize(u["text"])) for u in self.utterances)


def build_stream(queue: list[Clip], duration: float, rng: random.Random, rate: int = RATE) -> Stream | None:
    """One stream from the clips of ``queue`` (removed from it as used); None if none fits.

    LEAD s of silence, then clips whose speech is PAUSE s apart, then TAIL s. While the stream is
    shorter than ``duration``, the next clip is the first of the queue that ends it no later than
    ``duration + SLACK``; the stream ends when none does.
    """
    pieces: list[np.ndarray] = []
    utterances: list[dict] = []
    written = 0  # samples in pieces
    speech_end = 0  # where the last clip's speech ends
    tail, target, limit = round(TAIL * rate), round(duration * rate), round((duration + SLACK) * rate)
    while queue and (not utterances or speech_end + tail < target):
        start = speech_end + round((rng.uniform(*PAUSE) if utterances else LEAD) * rate)
        clip = next((c for c in queue if start + c.speech_samples + tail <= limit), None)
        if clip is None:
            break
        queue.remove(clip)
        offset = start - clip.speech_start  # the clip's first sample in the stream
        pieces += [np.zeros(offset - written, np.int16), clip.pcm]
        written = offset + len(clip.pcm)
        speech_end = start + clip.speech_samples
        utterances.append(
            {
                "start": round(start / rate, 3),
                "end": round(speech_end / rate, 3),
                "text": clip.prompt.text,
                "source": clip.prompt.source,
            }
        )
    if not utterances:
        return None
    pieces.append(np.zeros(speech_end + tail - written, np.int16))
    return Stream("", np.concatenate(pieces), utterances)


def assemble_streams(
    clips: Sequence[Clip], streams: int, duration: float, seed: int, prefix: str = PREFIX
) -> list[Stream]:
    """Up to ``streams`` streams of about ``duration`` s, each clip used at most once.

    Stops early when the clips run out: a stream shorter than half of ``duration`` is not kept.
    """
    rng = random.Random(seed)
    queue = list(clips)
    rng.shuffle(queue)
    out: list[Stream] = []
    while len(out) < streams:
        stream = build_stream(queue, duration, rng)
        if stream is None or stream.duration < duration / 2:
            break
        stream.stream_id = f"{prefix}-{len(out):02d}"
        out.append(stream)
    return out


def write_stream(folder: Path, stream: Stream, seed: int) -> None:
    with wave.open(str(folder / f"{stream.stream_id}.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(stream.pcm.astype("<i2").tobytes())
    reference = {
        "stream_id": stream.stream_id,
        "split": "heldout",
        "language": "en",
        "sample_rate": RATE,
        "duration": round(stream.duration, 3),
        "kind": "speech",
        "utterances": stream.utterances,
        "seed": seed,
    }
    (folder / f"{stream.stream_id}.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


# --- main -----------------------------------------------------------------------------------------


def load_clips(debs: Path | None, exclude: set[str]) -> tuple[list[Clip], int]:
    """The usable clips, sorted by name, and the number of candidate prompts before the speech check."""
    cache = cache_root() / "debs"
    text = deb_files(get_deb(TEXT_DEB, debs, cache), lambda path: path == TRANSCRIPTS)[TRANSCRIPTS]
    transcripts = parse_transcripts(gzip.decompress(text).decode("utf-8"))

    def top_level_wav(path: str) -> bool:
        return path.startswith(SOUNDS_DIR) and path.endswith(".wav") and "/" not in path[len(SOUNDS_DIR) :]

    wavs = deb_files(get_deb(WAV_DEB, debs, cache), top_level_wav)
    by_name = {path[len(SOUNDS_DIR) : -len(".wav")]: data for path, data in wavs.items()}
    prompts = select_prompts(transcripts, by_name, exclude)
    clips = [make_clip(prompt, decode(by_name[prompt.name])) for prompt in prompts]
    return [clip for clip in clips if clip is not None], len(prompts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=cache_root() / "corpus" / PREFIX, help="output folder (default: %(default)s)"
    )
    parser.add_argument("--streams", type=int, default=12, help="number of streams (fewer if the prompts run out)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per stream, about")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--debs", type=Path, default=None, help=f"folder holding {WAV_DEB} and {TEXT_DEB} (default: download)"
    )
    parser.add_argument(
        "--exclude-from",
        type=Path,
        action="append",
        default=[],
        help="more corpus JSON files (or folders of them) whose utterance sources are left out (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exclude_files = default_exclude_files() + args.exclude_from
    exclude = used_sources(exclude_files) | {f"{VOICE}/{name}.wav" for name in DEV_PROMPTS}
    clips, candidates = load_clips(args.debs, exclude)
    print(
        f"{len(clips)} prompts ({candidates} top-level spoken prompts not among the {len(exclude)} sources "
        f"of {len(exclude_files)} dev JSON files, {candidates - len(clips)} under {MIN_SPEECH} s of speech)"
    )
    streams = assemble_streams(clips, args.streams, args.duration, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(args.out.glob(f"{PREFIX}-[0-9]*.*")):
        if stale.suffix in (".wav", ".json"):
            stale.unlink()
    for stream in streams:
        write_stream(args.out, stream, args.seed)
        words, utterances = stream.words, len(stream.utterances)
        print(f"{stream.stream_id}  {stream.duration:6.2f} s  {utterances:3d} utterances  {words:4d} words")
    (args.out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(seed=args.seed))
    used = sum(len(s.utterances) for s in streams)
    print(
        f"{len(streams)} streams, {sum(s.duration for s in streams) / 60:.1f} min, {used} utterances, "
        f"{sum(s.words for s in streams)} words ({len(clips) - used} prompts unused) in {args.out}"
    )
    if len(streams) < args.streams:
        print(f"warning: prompts ran out after {len(streams)} of {args.streams} streams", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
