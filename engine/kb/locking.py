"""The writer lock of a knowledge base folder: ``fcntl.flock`` on ``DIR/.lock``.

One writer at a time; readers never take it (they read immutable generations). The
lock is released by the kernel if the writer dies, so a crash never leaves it held.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from engine.errors import KnowledgeBaseLockedError

LOCK_FILE = ".lock"


class WriteLock:
    """Context manager holding the exclusive writer lock of ``directory``.

    Args:
        directory: the knowledge base folder (must exist).
        timeout_s: how long to wait for another writer, in seconds; ``0`` fails at once.

    Raises:
        KnowledgeBaseLockedError: another process still holds the lock after ``timeout_s``.
    """

    def __init__(self, directory: Path, timeout_s: float = 0.0) -> None:
        self.path = directory / LOCK_FILE
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> WriteLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise KnowledgeBaseLockedError(
                        f"another process is writing the knowledge base {self.path.parent} (it holds "
                        f"{self.path}): wait for it to finish, or pass lock_timeout_s to wait") from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
