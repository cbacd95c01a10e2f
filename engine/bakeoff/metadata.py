"""What made a measurement: model, CPU, threads, code version and date, for the report's header and plot footers.

A figure read without this is a figure whose numbers cannot be compared with another run's.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

#: The checkout this package was loaded from (engine/bakeoff/metadata.py → the repository root).
_REPO_ROOT = Path(__file__).resolve().parents[2]
_GIT_TIMEOUT_S = 5.0


def run_metadata(model_path: str | os.PathLike[str] | None = None, threads: int | None = None) -> dict:
    """The facts a reader needs to place a measurement.

    Args:
        model_path: the generator model file (its name is reported), when known.
        threads: the generation thread count, when known.

    Returns:
        ``{"model", "cpu", "threads", "commit", "date", "platform"}``: the model file's name
        (None when not given), the CPU's model name, ``threads``, the short git commit of
        this checkout with "+dirty" when it has uncommitted changes (None when the package
        does not run from a git checkout or git is missing), the UTC date and time
        ("2026-12-05 21:14 UTC") and ``platform.platform()``.
    """
    return {"model": Path(model_path).name if model_path is not None else None, "cpu": cpu_model(),
            "threads": threads, "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform()}


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``cpuinfo`` (Linux), else what ``platform`` knows, else "unknown"."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine() or "unknown"


def git_commit(repo: str | os.PathLike[str] = _REPO_ROOT) -> str | None:
    """The short commit checked out at ``repo``, "+dirty" when its tree has changes; None outside a checkout.

    Only a checkout whose top level is ``repo`` itself counts: a package installed into a
    virtual environment that lives inside some other checkout is not that checkout's code.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=_GIT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(repo).resolve():
        return None
    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain")
    return f"{commit}+dirty" if status else commit
