"""Clean shutdown with calls in flight: close() waits for them, and so does the process's exit.

A thread inside native code that releases the GIL (llama.cpp decode, ONNX Runtime,
hnswlib) must not still be there when the interpreter finalizes: when it comes back
for the GIL, CPython ends the thread with ``pthread_exit``, whose forced unwind runs
through a C++ destructor that reacquires the GIL (``gil_scoped_release``), and the
C++ runtime aborts ("terminate called without an active exception", SIGABRT, and a
gdb backtrace from ggml's handler). Daemon threads are never joined, so this happens
to any library user whose daemon thread is asking or searching at exit.

So every such call enters a :class:`CallGate`: :meth:`CallGate.close` refuses new
calls, cancels what can be cancelled, and waits for the calls inside to leave. One
process-wide gate (:data:`NATIVE`) is closed at exit (``atexit`` runs after the
non-daemon threads are joined and before daemon threads are frozen), so no thread is
in native code when finalization starts; calls made afterwards raise
:class:`~engine.errors.EngineClosedError` instead of entering it.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from engine.errors import EngineClosedError

T = TypeVar("T")
#: How long the process's exit waits for native calls in flight (a decode step, a search).
EXIT_WAIT_S = 30.0


class CallGate:
    """Counts the calls inside something; once closed, refuses new ones.

    Args:
        what: named in the error a refused call raises ("this Engine", "the process").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._cond = threading.Condition()
        self._inside = 0
        self._closed = False
        # owner -> a function of the owner: holding no bound method keeps the owner collectable.
        self._cancels: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def call(self) -> Iterator[None]:
        """Hold the gate for the duration of one call.

        Raises:
            EngineClosedError: the gate is closed.
        """
        with self._cond:
            if self._closed:
                raise EngineClosedError(f"{self.what} is closed (shutting down): make a new one to go on")
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def on_close(self, owner: T, cancel: Callable[[T], None]) -> None:
        """Call ``cancel(owner)`` when the gate closes, if ``owner`` still lives (it is held weakly;
        pass an unbound function such as ``Generator.cancel``, not a bound method of ``owner``)."""
        with self._cond:
            self._cancels[owner] = cancel

    def close(self, timeout_s: float = EXIT_WAIT_S) -> bool:
        """Refuse new calls, cancel those that can be, and wait for the others; True when none is left."""
        with self._cond:
            self._closed = True
            cancels = list(self._cancels.items())
        for owner, cancel in cancels:
            cancel(owner)
        with self._cond:
            return self._cond.wait_for(lambda: self._inside == 0, timeout_s)


#: Every call into native code that releases the GIL, in this process.
NATIVE = CallGate("the engine (the process is exiting)")


@atexit.register
def _close_at_exit() -> None:
    NATIVE.close()
