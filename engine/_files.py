"""File helpers shared by the components: the one sha256 and the one atomic write.

An atomic write goes through a temporary sibling (``.NAME.tmp`` in the same folder,
so the rename never crosses file systems): the data is written, flushed and fsynced,
the sibling is renamed over the target with ``os.replace``, and the folder is
fsynced. A reader sees the old file or the new one, never half of it, and once the
call returns the new file survives a power cut. If the writer fails, the target is
left as it was and the sibling is removed.

``atomic_writer`` (and ``write_text_atomic``, ``write_bytes_atomic``) write the
data themselves; ``move_into_place`` finishes the same write for a file a library
wrote at ``temp_sibling(path)`` from a path of its own (a GGUF writer, say).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

from engine.errors import InputError

_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def temp_sibling(path: Path) -> Path:
    """The temporary file an atomic write of ``path`` goes through (hidden, same folder)."""
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: Literal["w", "wb"] = "w") -> Iterator[IO]:
    """Open ``path`` for a streamed atomic write: ``with atomic_writer(path, "wb") as handle:``.

    The target is replaced only when the block ends without an exception; raising
    inside the block (a failed checksum, say) leaves the target as it was.

    Args:
        path: the file to create or replace.
        mode: ``"w"`` for UTF-8 text, ``"wb"`` for bytes.

    Raises:
        InputError: ``mode`` is neither.
        OSError: the folder is missing or not writable.
    """
    if mode not in ("w", "wb"):
        raise InputError(f"mode={mode!r}: an atomic write takes 'w' (text) or 'wb' (bytes)")
    path = Path(path)
    temp = temp_sibling(path)
    try:
        with open(temp, mode, encoding=None if mode == "wb" else "utf-8") as handle:
            yield handle
    except BaseException:
        _discard(temp)
        raise
    move_into_place(temp, path)


def move_into_place(temp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Durably replace ``path`` with the complete file ``temp`` (fsync it, ``os.replace``,
    fsync the folder); ``temp`` is removed if that fails. Returns ``path``.

    Raises:
        OSError: ``temp`` is missing or the folder is not writable.
    """
    temp, path = Path(temp), Path(path)
    try:
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _discard(temp)
        raise
    fsync_dir(path.parent)
    return path


def _discard(temp: Path) -> None:
    # The write's own error is the one to report, not a failure to tidy up after it.
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomically create or replace ``path`` with ``text`` in UTF-8; returns the path."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically create or replace ``path`` with ``data``; returns the path."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder so that renames and new files in it survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
