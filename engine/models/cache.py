"""The model cache: where fetched models live, and the check every load makes.

Loading checks a cached file again (:func:`verify_file`, called by ``Generator``
and ``Embedder``): a file whose size, mtime or inode differs from the stamp's is
hashed before it is used, so a model damaged since its fetch is refused instead of
loaded; an unchanged one costs a ``stat``. The stamp (written by
:func:`engine.models.fetch.fetch`) records what was verified.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine._files import move_into_place, sha256_file
from engine.errors import ModelError
from engine.models.registry import MODELS_DIR_ENV, ModelSpec, _expected_names, load_manifest, spec

_STAMP = ".verified.json"


def default_cache_dir() -> Path:
    """Where models live unless the caller says otherwise.

    ``$BAKEOFF_MODELS_DIR`` if set; else ``models/`` of the checkout when the package
    runs from a clone of the repository; else the user's cache folder.
    """
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]  # engine/models/cache.py -> the checkout
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("bakeoff")) / "models"


def model_dir(name: str, cache_dir: Path | str | None = None) -> Path:
    """The folder of a fetched model, its files verified (see :func:`verify_file`).

    Raises:
        ModelError: the model has not been fetched into the cache, or one of its files
            no longer has the sha256 it was fetched with.
        InputError: an unknown model name.
    """
    model = spec(name)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = directory / model.name
    names = _expected_names(model)
    stamp = _read_stamp(directory)
    if stamp is None or any(n not in stamp or not (directory / n).is_file() for n in names):
        raise ModelError(
            f"model {model.name!r} is not in the cache {directory.parent}: run `bakeoff models fetch`"
        )
    for n in names:
        _verify(directory / n, _expected_sha256(model, n, stamp), stamp)
    return directory


def model_path(name: str, cache_dir: Path | str | None = None) -> Path:
    """Path of the model's main file (the GGUF, or the fp32 ONNX graph of an embedder)."""
    return model_dir(name, cache_dir) / spec(name).main


def verify_file(path: str | os.PathLike[str]) -> bool:
    """Check a file of the model cache against its sha256 before it is loaded.

    A file is in the model cache when it lies in the folder of a manifest model and
    that folder's stamp (written by :func:`fetch`) lists it. Its expected sha256 is the
    manifest's, or, for a file made at fetch time (the embedder's ONNX graphs), the
    one recorded when it was made. The stamp remembers each file's size, mtime and
    inode when it was last hashed: an unchanged file costs a ``stat``, a changed or
    copied one is hashed again (about 0.3 s per 100 MB) and the stamp updated.

    Returns:
        True when the file was verified; False when it is not a file of the model
        cache (nothing known to compare it with: the caller checks it otherwise).

    Raises:
        ModelError: the file's sha256 is not the expected one; the message says to fetch
            the model again.
    """
    path = Path(path).resolve()
    specs = load_manifest()
    model = specs.get(path.parent.name)
    stamp = _read_stamp(path.parent) if model is not None else None
    if model is None or stamp is None or path.name not in stamp:
        return False
    expected = _expected_sha256(model, path.name, stamp)
    if not expected:
        return False
    _verify(path, expected, stamp)
    return True


def _expected_sha256(model: ModelSpec, name: str, stamp: dict) -> str:
    """The manifest's sha256 of ``name``, or the stamp's for a file made at fetch time."""
    for item in model.files:
        if item.name == name:
            return item.sha256
    entry = stamp.get(name)
    return entry.get("sha256", "") if isinstance(entry, dict) else ""


def _verify(path: Path, expected: str, stamp: dict) -> None:
    """Raise ModelError unless ``path`` has sha256 ``expected``; a stat when the stamp says it was checked."""
    try:
        info = path.stat()
    except OSError as error:
        raise ModelError(f"cannot read {path} ({error.strerror}): run `bakeoff models fetch`") from None
    entry = stamp.get(path.name)
    if isinstance(entry, dict) and entry.get("sha256") == expected and _same_file(entry, info):
        return
    digest = sha256_file(path)
    if digest != expected:
        raise ModelError(
            f"{path} is corrupted: its sha256 is {digest}, expected {expected}: "
            f"fetch it again with `bakeoff models fetch {path.parent.name} --dir {path.parent.parent}`"
        )
    _record(path.parent, path.name, _entry(info, expected))


def _same_file(entry: dict, info: os.stat_result) -> bool:
    return (entry.get("size") == info.st_size and entry.get("mtime_ns") == info.st_mtime_ns
            and entry.get("inode") == info.st_ino)


def _entry(info: os.stat_result, sha256: str) -> dict:
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino, "sha256": sha256}


def _record(directory: Path, name: str, entry: dict) -> None:
    """Remember one verified file in the stamp; a cache folder that is not writable only costs a hash next time."""
    stamp = _read_stamp(directory)
    if stamp is None:
        return
    stamp[name] = entry
    with contextlib.suppress(OSError):
        _write_stamp(directory, stamp)


def _file_matches(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def _stat_entry(path: Path, sha256: str) -> dict:
    return _entry(path.stat(), sha256)


def _read_stamp(directory: Path) -> dict | None:
    try:
        stamp = json.loads((directory / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_verified(model: ModelSpec, directory: Path, names: list[str]) -> bool:
    """True when the stamp lists every file and each has its expected sha256 (hashed again only if it changed)."""
    stamp = _read_stamp(directory)
    if stamp is None or any(n not in stamp for n in names):
        return False
    try:
        for n in names:
            _verify(directory / n, _expected_sha256(model, n, stamp), stamp)
    except ModelError:
        return False
    return True


def _write_stamp(directory: Path, verified: dict) -> None:
    # A temporary file of its own, not the shared sibling of atomic_writer: two processes
    # recording a verification at once each publish a whole stamp, the last one wins.
    handle, temp = tempfile.mkstemp(dir=directory, prefix=f"{_STAMP}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes it private; a shared cache's stamp stays readable to all
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(verified, indent=2, sort_keys=True))
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    move_into_place(temp, directory / _STAMP)


def remove(name: str, cache_dir: Path | str | None = None) -> None:
    """Delete a model from the cache (used by tests)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    shutil.rmtree(root / spec(name).name, ignore_errors=True)
