"""Streaming a generation: the text pieces of one request, as an iterator.

Generation runs on a worker thread (the C++ decode loop releases the GIL and calls
back per piece); pieces arrive through a queue, so the consumer may stop early:
closing the stream cancels the request.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.errors import CancelledError

if TYPE_CHECKING:
    from engine.generator import Generation, Generator, _Request


class _StreamClosed(Exception):
    """Raised inside the piece callback to unwind generation when the consumer left."""


_DONE = object()


class TextStream:
    """Iterator over the text pieces of one streamed request (see :meth:`Generator.stream`).

    Generation runs on a worker thread (the decode loop itself releases the GIL);
    pieces arrive through a queue. ``generation`` is set once the stream is exhausted.
    """

    def __init__(self, generator: Generator, request: _Request) -> None:
        self._generator = generator
        self._request = request
        self.generation: Generation | None = None
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="engine-stream", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, str):
            return item
        self._finished = True
        self._thread.join()
        if isinstance(item, BaseException):
            raise item
        raise StopIteration

    def _work(self) -> None:
        def on_piece(piece: str) -> None:
            if self._closed.is_set():
                raise _StreamClosed
            self._queue.put(piece)

        try:
            with self._generator._lock:
                if self._closed.is_set():
                    raise _StreamClosed
                self._running.set()
                self.generation = self._generator._run(self._request, on_piece)
            self._queue.put(_DONE)
        except (_StreamClosed, CancelledError) as exc:
            self._queue.put(_DONE if self._closed.is_set() else exc)
        except BaseException as exc:  # handed to the consumer thread, raised there
            self._queue.put(exc)

    def close(self) -> None:
        """Stop generation (if running) and wait for the worker to finish."""
        if self._finished:
            return
        self._finished = True
        self._closed.set()
        if self._thread is not None:
            if self._running.is_set():  # never cancel another caller's request
                self._generator._session.cancel()
            self._thread.join()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_finished"):
            self.close()
