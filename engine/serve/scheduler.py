"""One loaded model, one request at a time, in order of arrival, through a bounded queue.

Why one at a time: the engine has one llama.cpp context (one KV cache), and one
decode already keeps the cores busy (memory-bound), so a second request would only
slow the first. Requests therefore wait their turn in a FIFO of ``max_waiting``; one
more is refused at once (:class:`Overloaded`: the app answers 429 with
``Retry-After``) instead of piling up.

A dedicated worker thread runs each request through :meth:`Engine.stream` and hands
its pieces to the event loop. A request is cancelled (its client left, or its deadline
passed) whether it waits (it is skipped) or runs (the generator stops at its next
token). :meth:`Scheduler.close` cancels everything and joins the worker, so nothing is
left inside native code when the process exits.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import CancelledError, EngineError

if TYPE_CHECKING:
    from engine.answer import Answer
    from engine.facade import Engine
    from engine.serve.protocol import ChatRequest


class Overloaded(Exception):
    """The queue is full (or the server is stopping); retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int, *, stopping: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s, self.stopping = retry_after_s, stopping


class Cancelled(Exception):
    """The request was cancelled before it finished: ``reason`` is "deadline", "disconnect" or "shutdown"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Ticket:
    """One submitted request, as its handler sees it: events arrive on ``events``.

    Events: ``("piece", str)``, then ``("answer", Answer)``, or ``("error", exception)``
    (an :class:`EngineError` the engine raised, or :class:`Cancelled`).
    """

    request: ChatRequest
    deadline: float  # time.monotonic() after which the request is cancelled
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: str | None = None
    started: float | None = None  # when the worker took it

    def emit(self, kind: str, value: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


class Scheduler:
    """A bounded FIFO of requests in front of one :class:`Engine`.

    Args:
        engine: the loaded engine (its generator serves one request at a time).
        max_waiting: requests that may wait while one runs; one more is refused.
        deadline_s: wall time a request may take from arrival to its last token.
    """

    def __init__(self, engine: Engine, *, max_waiting: int = 8, deadline_s: float = 120.0) -> None:
        self.engine, self.max_waiting, self.deadline_s = engine, max_waiting, deadline_s
        self._queue: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting: list[Ticket] = []
        self._current: Ticket | None = None
        self._closing = False
        self._service_s = 1.0  # running mean of a request's service time, for Retry-After
        self._worker = threading.Thread(target=self._work, name="bakeoff-serve-worker")
        self._worker.start()

    @property
    def waiting(self) -> int:
        """Requests queued behind the running one."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """1 while a request is being answered, else 0."""
        return int(self._current is not None)

    def submit(self, request: ChatRequest) -> Ticket:
        """Queue ``request`` (from the event loop); its events arrive on the ticket.

        Raises:
            Overloaded: ``max_waiting`` requests already wait, or the server is stopping.
        """
        deadline_s = min(self.deadline_s, request.deadline_s or self.deadline_s)
        ticket = Ticket(request, time.monotonic() + deadline_s, asyncio.get_running_loop())
        with self._lock:
            if self._closing:
                raise Overloaded("the server is shutting down", 5, stopping=True)
            if len(self._waiting) >= self.max_waiting:
                ahead = len(self._waiting) + 1
                raise Overloaded(f"{ahead} requests are ahead (the queue holds {self.max_waiting}): retry later",
                                 max(1, round(ahead * self._service_s)))
            self._waiting.append(ticket)
        self._queue.put(ticket)
        return ticket

    def cancel(self, ticket: Ticket, reason: str) -> None:
        """Stop ``ticket``: skipped if it waits, its generation stopped at the next token if it runs."""
        with self._lock:
            if ticket.cancelled is None:
                ticket.cancelled = reason
            if self._current is ticket:
                # The worker submits its next request only after taking this lock, so this
                # cancels exactly the running one (Generator.cancel reaches requests submitted so far).
                self.engine.generator.cancel()

    def drain(self) -> None:
        """Refuse new requests and cancel the waiting and the running one (returns at once)."""
        with self._lock:
            self._closing = True
            pending = list(self._waiting) + ([self._current] if self._current is not None else [])
        for ticket in pending:
            self.cancel(ticket, "shutdown")

    def close(self, timeout_s: float = 30.0) -> None:
        """:meth:`drain`, then join the worker (it finishes the running request's current token)."""
        self.drain()
        self._queue.put(None)
        self._worker.join(timeout_s)

    def _work(self) -> None:
        while (ticket := self._queue.get()) is not None:
            with self._lock:
                self._waiting.remove(ticket)
                if ticket.cancelled is not None:
                    ticket.emit("error", Cancelled(ticket.cancelled))
                    continue
                if time.monotonic() > ticket.deadline:
                    ticket.cancelled = "deadline"
                    ticket.emit("error", Cancelled("deadline"))
                    continue
                self._current = ticket
            ticket.started = time.monotonic()
            try:
                self._answer(ticket)
            finally:
                with self._lock:
                    self._current = None
                self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - ticket.started)

    def _answer(self, ticket: Ticket) -> None:
        request = ticket.request
        answer: Answer | None = None
        try:
            stream = self.engine.stream(request.question, request.mode, max_tokens=request.max_tokens,
                                        splice=request.splice, temperature=request.temperature, stop=request.stop)
            with stream:
                for piece in stream:
                    if ticket.cancelled is not None:
                        break
                    ticket.emit("piece", piece)
            answer = stream.answer
        except CancelledError:
            pass
        except EngineError as error:
            ticket.emit("error", error)
            return
        except Exception as error:  # a bug: the handler answers 500 without a traceback
            ticket.emit("error", error)
            return
        if answer is not None and ticket.cancelled is None:
            ticket.emit("answer", answer)
        else:
            ticket.emit("error", Cancelled(ticket.cancelled or "shutdown"))
