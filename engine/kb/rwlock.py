"""A readers–writer lock for threads: many readers at once, or one writer.

A writer that is waiting blocks new readers, so a steady stream of searches cannot
starve a swap; it waits only for the readers already inside. Neither side is
re-entrant: a thread holding the read side must not ask for either side again (a
writer waiting between the two would deadlock it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadersWriterLock:
    """``with lock.read():`` for readers (shared), ``with lock.write():`` for the writer (exclusive)."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the shared side for the block; waits while a writer holds or waits for the lock."""
        with self._changed:
            while self._writing or self._writers_waiting:
                self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                if not self._readers:
                    self._changed.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the exclusive side for the block; waits for the readers inside to leave."""
        with self._changed:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._changed.wait()
            finally:
                self._writers_waiting -= 1
                self._changed.notify_all()  # readers held back for a writer that gave up may go on
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()
