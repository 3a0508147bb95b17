"""bench.corpus: the held-out corpus builder, on synthetic audio and tiny hand-made archives (offline)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import random
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest

from bench import corpus
from bench.corpus import (
    Clip,
    Prompt,
    assemble_streams,
    deb_files,
    default_exclude_files,
    make_clip,
    parse_transcripts,
    read_ar,
    select_prompts,
    speech_bounds,
    used_sources,
    write_stream,
)

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 16000


def tone(seconds: float, dbfs: float = -20.0, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    """A sine whose RMS is ``dbfs`` (full scale 1.0)."""
    t = np.arange(round(seconds * rate)) / rate
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, dbfs: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * rate)) * 10 ** (dbfs / 20)).astype(np.float32)


def synthetic_clips(lengths: list[float]) -> list[Clip]:
    clips = []
    for i, seconds in enumerate(lengths):
        audio = np.concatenate([np.zeros(RATE // 5, np.float32), tone(seconds), np.zeros(RATE // 4, np.float32)])
        clip = make_clip(Prompt(f"p{i:03d}", f"prompt number {i}."), audio)
        assert clip is not None
        clips.append(clip)
    return clips


# --- transcripts and selection ----------------------------------------------------------------------

TRANSCRIPT_TEXT = """\
; Core Asterisk Sounds in English

activated: Activated.
agent-incorrect: Login incorrect.  Please enter your agent number followed by the pound key.
ascending-2tone: [ascending tones]
confbridge-join: <beep ascending>
spy-iax2: IAX (note: does not say "2")
digits/1: one
letters/a: a
empty:
vm-options: Press 1 to record your unavailable message.
  ; an indented comment: not a prompt
not a prompt line
orphan: No audio for this one.
"""


def test_parse_transcripts_reads_names_texts_and_folders():
    transcripts = parse_transcripts(TRANSCRIPT_TEXT)
    assert transcripts["activated"] == "Activated."
    # whitespace collapsed, as in the dev corpus references
    assert transcripts["agent-incorrect"] == (
        "Login incorrect. Please enter your agent number followed by the pound key."
    )
    assert transcripts["digits/1"] == "one"
    assert transcripts["spy-iax2"] == 'IAX (note: does not say "2")'  # split at the first colon only
    assert transcripts["empty"] == ""
    assert not any(name.startswith(";") or name.startswith("not a") for name in transcripts)
    assert len(transcripts) == 10


def test_select_prompts_keeps_spoken_top_level_prompts_not_in_the_dev_corpus():
    transcripts = parse_transcripts(TRANSCRIPT_TEXT)
    available = [name for name in transcripts if name != "orphan"]
    prompts = select_prompts(transcripts, available, exclude={"en_US_f_Allison/vm-options.wav"})
    assert [p.name for p in prompts] == ["activated", "agent-incorrect"]
    assert prompts[0] == Prompt("activated", "Activated.")
    assert prompts[0].source == "en_US_f_Allison/activated.wav"
    everything = select_prompts(transcripts, available, exclude=set())
    assert [p.name for p in everything] == ["activated", "agent-incorrect", "vm-options"]


def test_exclusions_come_from_dev_jsons(tmp_path):
    repo = tmp_path / "main"
    shared = tmp_path / "shared" / "corpus" / "dev" / "en"
    (repo / "tests" / "fixtures").mkdir(parents=True)
    shared.mkdir(parents=True)

    def reference(path: Path, *names: str) -> None:
        utterances = [{"start": 1.0, "end": 2.0, "text": "x", "source": f"en_US_f_Allison/{n}.wav"} for n in names]
        path.write_text(json.dumps({"language": "en", "duration": 3.0, "utterances": utterances}))

    reference(shared / "en-dev-00.json", "a", "b")
    reference(repo / "tests" / "fixtures" / "en-dev-01.json", "c")
    reference(repo / "tests" / "fixtures" / "fr-dev-00.json", "french")
    (repo / "tests" / "fixtures" / "en-dev-silence-00.json").write_text('{"language": "en", "utterances": []}')
    files = default_exclude_files(repo)
    assert [f.name for f in files] == ["en-dev-00.json", "en-dev-01.json", "en-dev-silence-00.json"]
    assert used_sources(files) == {f"en_US_f_Allison/{n}.wav" for n in "abc"}
    more = tmp_path / "more"
    more.mkdir()
    reference(more / "x.json", "d")
    assert used_sources([more]) == {"en_US_f_Allison/d.wav"}  # a folder: its JSON files
    # without ../shared beside the repo, the fixtures only
    (tmp_path / "shared" / "corpus" / "dev" / "en" / "en-dev-00.json").unlink()
    assert [f.name for f in default_exclude_files(repo)] == ["en-dev-01.json", "en-dev-silence-00.json"]


def test_the_repo_fixtures_are_excluded_by_default():
    sources = used_sources(default_exclude_files())
    fixture_sources = used_sources([FIXTURES / "en-dev-00.json"])
    assert "en_US_f_Allison/de-activated.wav" in fixture_sources <= sources


# --- silence trimming -------------------------------------------------------------------------------


def test_speech_bounds_of_a_tone_between_silences():
    audio = np.concatenate([noise(0.5, -70), tone(1.0), noise(0.7, -60, seed=1)])
    start, end = speech_bounds(audio)
    assert abs(start / RATE - 0.5) <= 0.011
    assert abs(end / RATE - 1.5) <= 0.011


def test_speech_bounds_threshold_and_edges():
    assert speech_bounds(noise(1.0, -55)) is None  # below -45 dBFS: silence
    assert speech_bounds(np.zeros(0, np.float32)) is None
    start, end = speech_bounds(noise(1.0, -35))
    assert (start, end) == (0, RATE)
    start, end = speech_bounds(np.concatenate([tone(0.305), np.zeros(RATE // 2, np.float32)]))
    assert start == 0 and abs(end / RATE - 0.305) <= 0.011


def test_make_clip_keeps_a_margin_and_skips_short_speech():
    audio = np.concatenate([np.zeros(RATE, np.float32), tone(0.8), np.zeros(RATE, np.float32)])
    clip = make_clip(Prompt("p", "text"), audio)
    assert clip is not None and clip.pcm.dtype == np.int16
    margin = round(corpus.MARGIN * RATE)
    assert clip.speech_start == margin and len(clip.pcm) - clip.speech_end == margin
    assert abs(clip.speech_samples / RATE - 0.8) <= 0.011
    # the speech at the very start of the file: no margin before it
    edge = make_clip(Prompt("p", "text"), np.concatenate([tone(0.8), np.zeros(RATE, np.float32)]))
    assert edge is not None and edge.speech_start == 0
    short = np.concatenate([np.zeros(RATE, np.float32), tone(0.25), np.zeros(RATE, np.float32)])
    assert make_clip(Prompt("p", "text"), short) is None
    assert make_clip(Prompt("p", "text"), np.zeros(RATE, np.float32)) is None


# --- streams ----------------------------------------------------------------------------------------


def check_stream_timing(utterances: list[dict], duration: float) -> None:
    assert utterances[0]["start"] == pytest.approx(corpus.LEAD, abs=0.002)
    for utterance in utterances:
        assert utterance["start"] < utterance["end"]
    for before, after in itertools.pairwise(utterances):
        assert corpus.PAUSE[0] - 0.002 <= after["start"] - before["end"] <= corpus.PAUSE[1] + 0.002
    assert duration - utterances[-1]["end"] == pytest.approx(corpus.TAIL, abs=0.002)


def test_assemble_streams_uses_each_prompt_once_near_the_target_duration():
    lengths = [0.5 + (i * 7 % 23) / 4 for i in range(60)]  # 0.5 .. 6 s
    clips = synthetic_clips(lengths)
    streams = assemble_streams(clips, streams=3, duration=30.0, seed=0)
    assert [s.stream_id for s in streams] == ["en-heldout-00", "en-heldout-01", "en-heldout-02"]
    sources = [u["source"] for s in streams for u in s.utterances]
    assert len(sources) == len(set(sources))
    for stream in streams:
        assert 30.0 <= stream.duration <= 30.0 + corpus.SLACK
        check_stream_timing(stream.utterances, stream.duration)
    # deterministic for a seed, another seed draws another corpus
    again = assemble_streams(clips, streams=3, duration=30.0, seed=0)
    assert [s.utterances for s in again] == [s.utterances for s in streams]
    assert all(np.array_equal(a.pcm, b.pcm) for a, b in zip(again, streams, strict=True))
    other = assemble_streams(clips, streams=3, duration=30.0, seed=1)
    assert [s.utterances for s in other] != [s.utterances for s in streams]


def test_assemble_streams_stops_when_the_prompts_run_out():
    clips = synthetic_clips([2.0] * 20)  # about 20 * 3 s: two 25 s streams, then a short rest
    streams = assemble_streams(clips, streams=10, duration=25.0, seed=3)
    assert 2 <= len(streams) <= 3
    assert all(s.duration >= 12.5 for s in streams)
    used = [u["source"] for s in streams for u in s.utterances]
    assert len(used) == len(set(used)) <= 20
    # a prompt too long for any stream is never used, and no stream is made of nothing
    assert assemble_streams(synthetic_clips([40.0]), streams=2, duration=25.0, seed=0) == []


def test_written_stream_reads_back_in_the_corpus_format(tmp_path):
    clips = synthetic_clips([1.0, 2.5, 0.6, 3.0, 1.7, 2.2, 0.9, 4.0])
    (stream,) = assemble_streams(clips, streams=1, duration=15.0, seed=5)
    write_stream(tmp_path, stream, seed=5)
    reference = json.loads((tmp_path / "en-heldout-00.json").read_text())
    dev = json.loads((FIXTURES / "en-dev-00.json").read_text())
    assert list(reference) == list(dev)
    assert list(reference["utterances"][0]) == list(dev["utterances"][0])
    assert reference["language"] == "en" and reference["split"] == "heldout" and reference["seed"] == 5
    assert reference["utterances"] == stream.utterances
    for utterance in reference["utterances"]:
        for key in ("start", "end"):
            assert utterance[key] == round(utterance[key], 3)

    with wave.open(str(tmp_path / "en-heldout-00.wav"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
    assert reference["duration"] == pytest.approx(len(audio) / RATE, abs=0.001)
    check_stream_timing(reference["utterances"], reference["duration"])
    # the energy is inside the utterance spans (plus the margin), digital silence outside
    margin = corpus.MARGIN + 0.001
    inside = np.zeros(len(audio), bool)
    for utterance in reference["utterances"]:
        lo, hi = round(utterance["start"] * RATE), round(utterance["end"] * RATE)
        span = audio[lo:hi]
        assert np.sqrt(np.mean(span**2)) > 10 ** (corpus.SILENCE_DBFS / 20)
        assert np.abs(span[:160]).max() > 0.01 and np.abs(span[-160:]).max() > 0.01
        inside[max(0, round((utterance["start"] - margin) * RATE)) : round((utterance["end"] + margin) * RATE)] = True
    assert not audio[~inside].any()


# --- the Debian archives ----------------------------------------------------------------------------


def ar_archive(members: list[tuple[str, bytes]], bsd: bool = False) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        if bsd:
            encoded = name.encode()
            field, data = f"#1/{len(encoded)}", encoded + data
        else:
            field = name + "/"
        out += f"{field:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_archive(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("./usr/share/doc")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return buffer.getvalue()


def deb(files: dict[str, bytes]) -> bytes:
    return ar_archive(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", tar_archive({"./control": b"Package: x\n"})),
            ("data.tar.xz", tar_archive({f"./{path}": data for path, data in files.items()})),
        ]
    )


@pytest.mark.parametrize("bsd", [False, True])
def test_read_ar_members_with_odd_sizes(bsd):
    members = [("debian-binary", b"2.0\n"), ("odd", b"abc"), ("data.tar.xz", b"\x00" * 7), ("empty", b"")]
    assert list(read_ar(ar_archive(members, bsd=bsd))) == members


def test_read_ar_rejects_other_files():
    with pytest.raises(ValueError, match="not an ar archive"):
        list(read_ar(b"PK\x03\x04 a zip file"))
    with pytest.raises(ValueError, match="truncated"):
        list(read_ar(ar_archive([("data.tar.xz", b"x" * 100)])[:-10]))


def test_deb_files_extracts_the_wanted_data_files():
    package = deb({"usr/share/a.wav": b"A", "usr/share/b.txt": b"B", "usr/share/sub/c.wav": b"C"})
    assert deb_files(package, lambda path: path.endswith(".wav")) == {
        "usr/share/a.wav": b"A",
        "usr/share/sub/c.wav": b"C",
    }
    with pytest.raises(ValueError, match=r"no data\.tar"):
        deb_files(ar_archive([("debian-binary", b"2.0\n")]), lambda path: True)


def test_get_deb_checks_the_hash_and_caches_the_download(tmp_path, monkeypatch):
    data = deb({"usr/share/x": b"x"})
    monkeypatch.setitem(corpus.DEB_SHA256, corpus.TEXT_DEB, hashlib.sha256(data).hexdigest())
    local = tmp_path / "debs"
    local.mkdir()
    (local / corpus.TEXT_DEB).write_bytes(data)
    assert corpus.get_deb(corpus.TEXT_DEB, local, tmp_path / "cache") == data
    (local / corpus.TEXT_DEB).write_bytes(data + b"tampered")
    with pytest.raises(SystemExit, match="sha256"):
        corpus.get_deb(corpus.TEXT_DEB, local, tmp_path / "cache")

    urls = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(corpus.urllib.request, "urlopen", urlopen)
    cache = tmp_path / "cache"
    assert corpus.get_deb(corpus.TEXT_DEB, None, cache) == data
    assert urls == [corpus.DEBIAN_POOL + corpus.TEXT_DEB]
    assert (cache / corpus.TEXT_DEB).read_bytes() == data
    assert corpus.get_deb(corpus.TEXT_DEB, None, cache) == data
    assert len(urls) == 1  # from the cache


# --- end to end, on fake packages -------------------------------------------------------------------


def wav_8k(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes((audio * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def test_main_builds_a_corpus_from_local_debs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("faster_whisper")
    rng = random.Random(0)
    names = [f"prompt-{i:02d}" for i in range(30)]
    transcripts = "; test\n" + "".join(f"{name}: Prompt {i}.\n" for i, name in enumerate(names))
    transcripts += "digits/1: one\nbeep: [a beep]\nshort: Too short.\n"
    sounds = corpus.SOUNDS_DIR
    wavs = {
        f"{sounds}{name}.wav": wav_8k(np.concatenate([np.zeros(800), tone(rng.uniform(0.5, 3), rate=8000)]))
        for name in names
    }
    wavs[f"{sounds}digits/1.wav"] = wavs[f"{sounds}beep.wav"] = wav_8k(tone(1.0, rate=8000))
    wavs[f"{sounds}short.wav"] = wav_8k(tone(0.2, rate=8000))
    debs = tmp_path / "debs"
    debs.mkdir()
    packages = {
        corpus.WAV_DEB: deb(wavs),
        corpus.TEXT_DEB: deb({corpus.TRANSCRIPTS: gzip.compress(transcripts.encode())}),
    }
    for name, data in packages.items():
        (debs / name).write_bytes(data)
        monkeypatch.setitem(corpus.DEB_SHA256, name, hashlib.sha256(data).hexdigest())
    excluded = tmp_path / "exclude.json"
    excluded.write_text(json.dumps({"utterances": [{"source": f"en_US_f_Allison/{names[0]}.wav"}]}))
    out = tmp_path / "out"
    stale = out / "en-heldout-07.json"
    out.mkdir()
    stale.write_text("{}")

    args = ["--out", str(out), "--streams", "2", "--duration", "20", "--debs", str(debs), "--exclude-from"]
    assert corpus.main([*args, str(excluded)]) == 0
    printed = capsys.readouterr().out
    assert "29 prompts" in printed and "en-heldout-00" in printed and "en-heldout-01" in printed
    assert not stale.exists()
    assert "CC-BY-SA-3.0" in (out / "ATTRIBUTION.md").read_text()
    references = [json.loads(p.read_text()) for p in sorted(out.glob("en-heldout-*.json"))]
    assert len(references) == 2
    sources = [u["source"] for r in references for u in r["utterances"]]
    assert len(sources) == len(set(sources))
    assert {s.split("/")[1] for s in sources} <= {f"{name}.wav" for name in names[1:]}
    for reference in references:
        check_stream_timing(reference["utterances"], reference["duration"])
    first = (out / "en-heldout-00.wav").read_bytes()
    assert corpus.main([*args, str(excluded)]) == 0
    assert (out / "en-heldout-00.wav").read_bytes() == first  # deterministic
