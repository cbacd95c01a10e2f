"""Sizes the benchmarks report: resident memory of this process and bytes on disk."""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
