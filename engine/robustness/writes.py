"""Knowledge-base writes run in a forked process, to be killed or to fail on purpose.

A ``WriterChild`` is a spawned process that loads the embedder once (one ONNX
Runtime thread, so that the process has no thread pool a fork would lose) and then
forks one short-lived process per write. The parent can SIGKILL that process at any
moment: it is never reaped before the parent says so, so its pid cannot be reused by
another process in between. A write can also carry a ``Fault``, an error injected in
the writing process:

- ``"fsize"``: ``RLIMIT_FSIZE`` of ``value`` bytes, with ``SIGXFSZ`` ignored, so the
  first write of any file past that size fails with ``EFBIG`` at the system call,
  whichever library makes it (SQLite, NumPy, hnswlib), as a full disk would;
- ``"enospc"``: the ``value``-th call of ``os.fsync`` or ``os.replace`` (every fsync
  and rename of the write path) raises ``OSError(ENOSPC)``; 0 counts the calls only.

Used by :mod:`engine.robustness.crash` and the crash-safety tests.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from engine.robustness.child import stop_worker

#: Write kinds: a first build into a folder without a knowledge base, a build over an existing
#: one, adding documents, removing one.
KINDS = ("build", "rebuild", "add", "remove")


@dataclass(frozen=True)
class Write:
    """One write of the knowledge base in ``kb_dir``.

    Attributes:
        kind: one of :data:`KINDS`.
        kb_dir: the knowledge base folder.
        sources: the documents to build from or to add, or the one to remove.
        chunk_tokens, overlap_tokens: chunking of a build or rebuild.
    """

    kind: str
    kb_dir: str
    sources: tuple[str, ...]
    chunk_tokens: int = 200
    overlap_tokens: int = 40


@dataclass(frozen=True)
class Fault:
    """An injected write error: ``kind`` ``"fsize"`` (bytes) or ``"enospc"`` (the n-th fsync/rename)."""

    kind: str
    value: int


@dataclass(frozen=True)
class Outcome:
    """What became of one write.

    Attributes:
        exit_code: of the writing process; ``-9`` when it was killed.
        finished: the write returned or raised before the process ended (else it was killed first).
        error: ``"module.Type: message"`` of what the write raised; None when it returned
            (or was killed first).
        typed: the error is an ``EngineError`` or an ``OSError``.
        elapsed_s: seconds the write ran, when it finished.
        fault_calls: with an ``"enospc"`` fault, the fsync/rename calls the write reached.
        published_before_fault: the manifest had been replaced when the fault fired.
    """

    exit_code: int | None
    finished: bool = False
    error: str | None = None
    typed: bool = True
    elapsed_s: float = 0.0
    fault_calls: int = 0
    published_before_fault: bool = False

    @property
    def killed(self) -> bool:
        return self.exit_code == -signal.SIGKILL


class WriterChild:
    """A spawned process that forks one process per write (see the module docstring).

    Args:
        cache_dir: model cache holding the embedder (None: the default cache).
        start_timeout_s: how long the child may take to load the embedder.

    Raises:
        RuntimeError: the child did not start.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, start_timeout_s: float = 180.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(None if cache_dir is None else str(cache_dir), theirs),
                                        daemon=True)
        self._process.start()
        theirs.close()
        try:
            ready = self._connection.poll(start_timeout_s) and self._connection.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self.stop()
            raise RuntimeError(f"the writer child did not start (exit code {self._process.exitcode})")

    def run(self, write: Write, *, kill_after_s: float | None = None, fault: Fault | None = None,
            timeout_s: float = 300.0) -> Outcome:
        """Run ``write`` in a fresh process; SIGKILL it ``kill_after_s`` after it was forked.

        A write still running after ``timeout_s`` is killed and reported with exit code None.
        """
        self._connection.send((write, fault))
        pid = self._connection.recv()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still ours, even if it has exited
        self._connection.send("reap")
        if not self._connection.poll(timeout_s):
            os.kill(pid, signal.SIGKILL)
            self._connection.recv()
            return Outcome(None, error=f"hang: no result in {timeout_s:.0f} s", typed=False)
        exit_code, report = self._connection.recv()
        return Outcome(exit_code, True, **json.loads(report)) if report else Outcome(exit_code)

    def stop(self) -> None:
        """End the child (idempotent)."""
        stop_worker(self._process, self._connection, grace_s=10)


def _serve(cache_dir: str | None, connection) -> None:
    """The spawned child: load the embedder, then fork one process per write the parent sends."""
    from engine.embedding.embedder import Embedder
    from engine.kb import scoring

    embedder = Embedder(cache_dir=cache_dir, threads=1)
    scoring.warm_up()
    connection.send("ready")
    while (job := connection.recv()) is not None:
        write, fault = job
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            os._exit(_write_and_report(write, fault, embedder, write_end))
        os.close(write_end)
        connection.send(pid)
        connection.recv()  # "reap": the parent has killed the process, or lets it finish
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(pid, 0)
        connection.send((os.waitstatus_to_exitcode(status), report.decode("utf-8")))


def _write_and_report(write: Write, fault: Fault | None, embedder, pipe_fd: int) -> int:
    """In the forked process: inject ``fault``, run ``write``, send the outcome as JSON; the exit code."""
    from engine.errors import EngineError

    calls = [0]
    published = [False]
    fired = [False]
    if fault is not None and fault.kind == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault.value, fault.value))
    elif fault is not None and fault.kind == "enospc":
        real_fsync, real_replace = os.fsync, os.replace

        def reached() -> None:
            calls[0] += 1
            if calls[0] == fault.value:
                fired[0] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fsync(fd):
            reached()
            return real_fsync(fd)

        def replace(source, target, **kwargs):
            reached()
            real_replace(source, target, **kwargs)
            published[0] = published[0] or Path(target).name == "manifest.json"

        os.fsync, os.replace = fsync, replace  # type: ignore[assignment]
    started = time.perf_counter()
    report: dict = {}
    try:
        _apply(write, embedder)
    except BaseException as error:  # noqa: BLE001 - every error is reported, typed or not
        report["error"] = f"{type(error).__module__}.{type(error).__name__}: {error}"[:500]
        report["typed"] = isinstance(error, (EngineError, OSError))
        report["published_before_fault"] = published[0] if fired[0] else False
    report["elapsed_s"] = time.perf_counter() - started
    report["fault_calls"] = calls[0]
    with os.fdopen(pipe_fd, "wb") as pipe:
        pipe.write(json.dumps(report).encode("utf-8"))
    return 0


def _apply(write: Write, embedder) -> None:
    from engine.kb.knowledge_base import KnowledgeBase

    if write.kind in ("build", "rebuild"):
        KnowledgeBase.build(list(write.sources), write.kb_dir, embedder=embedder, chunk_tokens=write.chunk_tokens,
                            overlap_tokens=write.overlap_tokens).close()
        return
    with KnowledgeBase.open(write.kb_dir, embedder=embedder, verify="size") as kb:
        if write.kind == "add":
            kb.add(list(write.sources))
        elif write.kind == "remove":
            kb.remove(write.sources[0])
        else:
            raise ValueError(f"unknown write kind {write.kind!r}")
