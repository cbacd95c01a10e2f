"""Streaming a generation: the text pieces of one request, as an iterator.

Generation runs on a worker thread (the C++ decode loop releases the GIL and calls
back per piece); pieces arrive through a queue, so the consumer may stop early:
closing the stream cancels the request, and so does dropping it.

The stream knows nothing of the generator behind it: it is given two callables,
``run(on_piece)`` (runs the request, taking the generator's lock for the call) and
``cancel()`` (cancels this request only, whether waiting or running).
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from engine.errors import CancelledError

if TYPE_CHECKING:
    from engine.generation.types import Generation

#: Runs the request, calling ``on_piece`` with each piece of text; returns the result.
RunRequest = Callable[[Callable[[str], None]], "Generation"]


class _StreamClosed(Exception):
    """Raised inside the piece callback to unwind generation when the consumer left."""


_DONE = object()


class _StreamState:
    """What the worker thread shares with its stream.

    It holds no reference to the :class:`TextStream`, so a stream its consumer drops
    is collected at once, and its finalizer (:meth:`abandon`) cancels the request
    instead of letting it run to ``max_tokens`` and hold the generator.
    """

    def __init__(self, run: RunRequest, cancel: Callable[[], None]) -> None:
        self.run = run
        self.cancel = cancel
        self.queue: queue.Queue[object] = queue.Queue()
        self.closed = threading.Event()
        self.generation: Generation | None = None

    def work(self) -> None:
        """The worker thread: run the request, hand pieces and the outcome to the queue."""
        def on_piece(piece: str) -> None:
            if self.closed.is_set():
                raise _StreamClosed
            self.queue.put(piece)

        try:
            self.generation = self.run(on_piece)
            self.queue.put(_DONE)
        except (_StreamClosed, CancelledError) as exc:
            self.queue.put(_DONE if self.closed.is_set() else exc)
        except BaseException as exc:  # handed to the consumer thread, raised there
            self.queue.put(exc)

    def abandon(self) -> None:
        """Stop: the worker unwinds at its next piece; a request not yet running never runs."""
        self.closed.set()
        self.cancel()


class TextStream:
    """Iterator over the text pieces of one streamed request (see :meth:`Generator.stream`).

    Generation runs on a worker thread (the decode loop itself releases the GIL);
    pieces arrive through a queue. ``generation`` is set once the stream is exhausted.
    Closing the stream, leaving its ``with`` block, or dropping the last reference to
    it cancels the request at once.

    Args:
        run: runs the request, calling its argument with each piece; returns the
            :class:`Generation`. Called once, on the worker thread.
        cancel: cancels this request (waiting or running); safe from any thread.
    """

    def __init__(self, run: RunRequest, cancel: Callable[[], None]) -> None:
        self._state = _StreamState(run, cancel)
        self._abandon = weakref.finalize(self, self._state.abandon)
        self._thread: threading.Thread | None = None
        self._finished = False

    @property
    def generation(self) -> Generation | None:
        """The full result, once the stream is exhausted; None before, or when closed early."""
        return self._state.generation

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._finished:
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(target=self._state.work, name="engine-stream", daemon=True)
            self._thread.start()
        item = self._state.queue.get()
        if isinstance(item, str):
            return item
        self._finished = True
        self._thread.join()
        self._abandon.detach()  # the request is over: nothing left to cancel
        if isinstance(item, BaseException):
            raise item
        raise StopIteration

    def close(self) -> None:
        """Cancel generation (waiting or running) and wait for the worker to finish."""
        if self._finished:
            return
        self._finished = True
        self._abandon()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
