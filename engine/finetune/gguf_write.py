"""Writing a GGUF file atomically: it is built under a temporary name beside its
target and moved over it only once complete, so a reader never sees half a file."""

from __future__ import annotations

import contextlib
from pathlib import Path

from engine._files import move_into_place, temp_sibling
from engine.errors import EngineError


def staging_path(out_path: Path, *, error: type[EngineError], what: str) -> Path:
    """The temporary file to build ``out_path`` in (its folder is created).

    Raises:
        ``error``: the folder cannot be created.
    """
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot write {what} to {out_path}: {exc}; choose a writable folder") from exc
    return temp_sibling(out_path)


def publish(writer, tmp: Path, out_path: Path, *, error: type[EngineError], what: str) -> Path:
    """Write ``writer``'s header, key-values and tensors to ``tmp``, then move it over ``out_path``.

    Raises:
        ``error``: the file cannot be written or moved into place (the temporary file is removed).
    """
    try:
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        move_into_place(tmp, out_path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise error(f"cannot write {what} to {out_path}: {exc}; check the folder is writable") from exc
    return out_path
