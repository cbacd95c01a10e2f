"""Resident memory of a process: the one reader of ``/proc/<pid>/statm`` (memory footprints,
the soak test, the server's child, the benchmarks all report through it)."""

from __future__ import annotations

import os
import resource


def resident_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, in bytes.

    Linux's ``/proc/<pid>/statm``; where there is no ``/proc`` (macOS), this process's
    peak instead (``ru_maxrss``), and 0 for another process.
    """
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid != "self":
            return 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
