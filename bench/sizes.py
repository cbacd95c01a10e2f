"""Sizes the benchmarks report: resident memory of this process and bytes on disk."""

from __future__ import annotations

from pathlib import Path

from engine._memory import resident_bytes


def rss_bytes() -> int:
    """Resident memory of this process."""
    return resident_bytes()


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
