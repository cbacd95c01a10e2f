"""The readers–writer lock a knowledge base swaps its generation under."""

from __future__ import annotations

import threading
import time

from engine.kb.rwlock import ReadersWriterLock


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_readers_hold_the_lock_together():
    lock = ReadersWriterLock()
    together = threading.Barrier(3, timeout=10)

    def read() -> None:
        with lock.read():
            together.wait()

    threads = [_start(read) for _ in range(3)]
    for thread in threads:
        thread.join(10)
    assert not together.broken


def test_a_writer_waits_for_readers_and_holds_back_new_ones():
    lock = ReadersWriterLock()
    order: list[str] = []
    reader_inside, reader_may_leave = threading.Event(), threading.Event()

    def first_reader() -> None:
        with lock.read():
            reader_inside.set()
            reader_may_leave.wait(10)
            order.append("reader 1 leaves")

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("reader 2")

    _start(first_reader)
    assert reader_inside.wait(10)
    writing = _start(writer)
    deadline = time.monotonic() + 10
    while not lock._writers_waiting and time.monotonic() < deadline:  # the writer is queued
        time.sleep(0.01)
    late = _start(late_reader)
    time.sleep(0.1)
    assert order == [], "the writer waits for the reader inside; the late reader waits for the writer"
    reader_may_leave.set()
    writing.join(10)
    late.join(10)
    assert order == ["reader 1 leaves", "writer", "reader 2"]

