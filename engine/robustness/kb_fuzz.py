"""Fuzz of knowledge-base files: a damaged file is a typed error, or, if nothing checkable changed, a search.

Each case truncates or flips one byte of one file of a real knowledge base, then opens
and searches it in a child process with ``verify="size"`` and ``verify="auto"``. A case
fails if the child dies by a signal, hangs, raises anything but an ``EngineError``, or
searches damage it should have seen: any damaged data file with ``"auto"`` (its sha256
catches every change), and ``ids.npy`` or ``vectors.npy`` with other hits than the
undamaged files give, in any mode (they are checked against the graph).

Seeded: the same seed gives the same cases in the same order; a longer budget only runs
more of them. ``build_fuzz_kb`` builds the knowledge base with M=4, so that a quarter
of the graph's elements have upper-level lists and damage lands there too.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.robustness.child import stop_worker

FILES = ("manifest.json", "index.hnsw", "vectors.npy", "ids.npy", "chunks.sqlite")
MODES = ("size", "auto")
QUERY = "How do I pair the pump with the hub?"
CASE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Case:
    """One damage: ``truncate`` to ``offset`` bytes, or ``flip`` (XOR) the byte at ``offset`` with ``mask``."""

    file: str
    kind: str
    offset: int
    mask: int = 0

    def apply(self, data: bytes) -> bytes:
        """``data`` with this damage."""
        if self.kind == "truncate":
            return data[:self.offset]
        out = bytearray(data)
        out[self.offset] ^= self.mask
        return bytes(out)

    def __str__(self) -> str:
        if self.kind == "truncate":
            return f"{self.file} truncated to {self.offset} bytes"
        return f"{self.file} byte {self.offset} ^= {self.mask:#04x}"


def cases(sizes: dict[str, int], seed: int) -> Iterator[Case]:
    """Truncations at the edges of every file, then seeded random flips (many in the headers) and truncations."""
    for name in FILES:
        for length in sorted({0, 1, 95, 96, 127, sizes[name] // 2, sizes[name] - 1}):
            if length < sizes[name]:
                yield Case(name, "truncate", length)
    rng = random.Random(seed)
    while True:
        name = rng.choice(FILES)
        size = sizes[name]
        if rng.random() < 0.1:
            yield Case(name, "truncate", rng.randrange(size))
            continue
        offset = rng.randrange(min(size, 256)) if rng.random() < 0.4 else rng.randrange(size)
        mask = 1 << rng.randrange(8) if rng.random() < 0.5 else rng.randrange(1, 256)
        yield Case(name, "flip", offset, mask)


def build_fuzz_kb(into: Path, embedder) -> Path:
    """Build the knowledge base the fuzz damages: six bundled documents (about 40 chunks), M=4."""
    from engine.kb import HnswConfig, KnowledgeBase
    from engine.questions.qa import BUNDLED_SET

    documents = sorted((BUNDLED_SET / "docs").glob("*.md"))[:6]
    KnowledgeBase.build(documents, into, embedder=embedder, hnsw=HnswConfig(M=4, ef_construction=20)).close()
    return into


# ------------------------------------------------------------------ the child


def serve(cache_dir: str | None, connection) -> None:
    """Child process: open and search the knowledge bases the parent names, until told to stop."""
    from engine.embedding.embedder import Embedder
    from engine.errors import EngineError
    from engine.kb import KnowledgeBase

    embedder = Embedder(cache_dir=cache_dir)
    connection.send("ready")
    while (job := connection.recv()) is not None:
        kb_dir, verify = job
        try:
            with KnowledgeBase.open(kb_dir, embedder=embedder, verify=verify) as kb:
                hits = kb.search(QUERY, 3).hits
            connection.send(("ok", " ".join(f"{h.chunk_id}:{h.score:.6f}" for h in hits)))
        except EngineError as error:
            connection.send(("typed", type(error).__name__))
        except Exception as error:  # noqa: BLE001  (what the fuzz looks for)
            connection.send(("untyped", f"{type(error).__name__}: {error}"[:300]))


class Child:
    """A long-lived child that runs the cases; replaced when it dies or hangs."""

    def __init__(self, cache_dir: str | Path | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=serve, args=(None if cache_dir is None else str(cache_dir), theirs),
                                        daemon=True)
        self._process.start()
        theirs.close()
        if not self._connection.poll(180) or self._connection.recv() != "ready":
            self.stop()
            raise RuntimeError("the fuzz child did not start")

    def ask(self, kb_dir: Path, verify: str) -> tuple[str, str]:
        """``(outcome, detail)``; outcome is ``ok``, ``typed``, ``untyped``, ``signal``, ``exit`` or ``hang``."""
        self._connection.send((str(kb_dir), verify))
        if not self._connection.poll(CASE_TIMEOUT_S):
            self.stop()
            return "hang", f"no answer in {CASE_TIMEOUT_S:.0f} s"
        try:
            return self._connection.recv()
        except EOFError:
            self._process.join(10)
            code = self._process.exitcode
            return ("signal" if code is not None and code < 0 else "exit"), f"exit code {code}"

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def stop(self) -> None:
        stop_worker(self._process, self._connection, grace_s=5)


# ------------------------------------------------------------------ the run


@dataclass(frozen=True)
class FuzzReport:
    """Outcomes of a fuzz run.

    Attributes:
        target: what was damaged.
        seed: the seed of the cases.
        seconds: the time budget.
        cases: damages tried.
        runs: loads or opens (a case may be tried more than one way).
        outcomes: runs per outcome (``ok``, ``typed <Error>``, ``untyped``, ``signal``, ``hang``...).
        failures: one line per failed run.
        skipped: why the fuzz did not run (empty when it ran).
    """

    target: str
    seed: int
    seconds: float
    cases: int
    runs: int
    outcomes: dict[str, int]
    failures: tuple[str, ...]
    skipped: str = ""


def fuzz_kb(built: Path, work: Path, *, seconds: float, seed: int, cache_dir: str | Path | None = None) -> FuzzReport:
    """Damage a copy of the knowledge base ``built`` case by case for ``seconds`` (see the module docstring).

    Args:
        built: a knowledge base (``build_fuzz_kb``); it is not changed.
        work: a folder for the copy (``work/kb`` must not exist).
        cache_dir: model cache holding the embedder it was built with (None: the default cache).

    Raises:
        RuntimeError: the undamaged copy does not open and search.
    """
    kb_dir = Path(shutil.copytree(built, work / "kb"))
    generation = json.loads((kb_dir / "manifest.json").read_text())["generation"]
    paths = {name: kb_dir / name if name == "manifest.json" else kb_dir / generation / name for name in FILES}
    originals = {name: path.read_bytes() for name, path in paths.items()}
    counts: Counter[str] = Counter()
    failures: list[str] = []
    child = Child(cache_dir)
    n_cases = 0
    try:
        outcome, pristine = child.ask(kb_dir, "size")
        if outcome != "ok":
            raise RuntimeError(f"the undamaged knowledge base gave {outcome}: {pristine}")
        deadline = time.monotonic() + seconds
        for case in cases({name: len(data) for name, data in originals.items()}, seed):
            if time.monotonic() > deadline:
                break
            n_cases += 1
            paths[case.file].write_bytes(case.apply(originals[case.file]))
            for verify in MODES:
                if not child.alive:
                    child = Child(cache_dir)
                outcome, detail = child.ask(kb_dir, verify)
                counts[outcome if outcome != "typed" else f"typed {detail}"] += 1
                # sha256 sees every change; the arrays are checked against the graph in any mode.
                unseen = outcome == "ok" and (
                    (verify == "auto" and case.file != "manifest.json")
                    or (case.file in ("ids.npy", "vectors.npy") and detail != pristine))
                if outcome not in ("ok", "typed") or unseen:
                    failures.append(f"{case}, verify={verify}: {'unseen damage' if unseen else outcome} {detail}")
            paths[case.file].write_bytes(originals[case.file])
    finally:
        child.stop()
    return FuzzReport("knowledge base", seed, seconds, n_cases, sum(counts.values()), dict(sorted(counts.items())),
                      tuple(failures))
