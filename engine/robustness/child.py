"""The child processes the robustness runs put native code in, so a crash is a result."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def stop_worker(process: Any, connection: Any, *, grace_s: float) -> None:
    """End a long-lived worker that serves requests over ``connection`` until it gets None:
    ask it to stop, wait ``grace_s``, then kill it (idempotent)."""
    if process.is_alive():
        try:
            connection.send(None)
        except OSError:  # it died meanwhile
            pass
        process.join(grace_s)
    if process.is_alive():
        process.kill()
    process.join(10)


def run_once(target: Callable[..., None], args: tuple, *, timeout_s: float) -> tuple[Any, int | None]:
    """Run ``target(*args, connection)`` in a spawned child and return ``(report, exit code)``.

    ``report`` is what the child sent, or None when it died (or hung past ``timeout_s``)
    before sending one; a child still alive a minute after its report is killed.
    """
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    child = context.Process(target=target, args=(*args, theirs), daemon=True)
    child.start()
    theirs.close()
    try:
        report = mine.recv() if mine.poll(timeout_s) else None
    except EOFError:  # the child died before reporting
        report = None
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join(10)
    return report, child.exitcode
