"""Crash safety of knowledge-base writes: SIGKILLs at random points, and writes that fail.

``kill_writes`` runs a seeded mix of first builds, rebuilds, adds and removes on small
knowledge bases, each in a fresh process (``engine.robustness.writes``) that is
SIGKILLed after a random fraction (0 to 1.2) of the time that kind of write last took,
so most kills land inside the write and some just after it. After each kill the
knowledge base must open with ``verify="full"``, hold the documents of before the
write or of after it, and answer a search; a killed first build may leave no
knowledge base, which ``open`` must then refuse with a typed error.

``failed_writes`` makes writes fail instead (see ``writes.Fault``): each fsync or
rename of the write in turn raises ``ENOSPC``, and file-size limits land on each file
of the new generation. The write must raise a typed error (an ``EngineError`` or an
``OSError``) and leave the previous knowledge base published and searchable; or,
when the limit is not reached, finish.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.robustness.writes import Fault, Outcome, Write, WriterChild

QUERY = "How do I contact support about my device?"
#: Generation folders a knowledge base may hold after a kill: published, previous, one unpublished.
MAX_GENERATIONS = 3
#: Chunk size of ``failed_writes``: small chunks make ``index.hnsw`` and ``vectors.npy`` larger
#: than ``chunks.sqlite``, so that a size limit can land on each of them.
FAULT_CHUNK_TOKENS = 16
#: Every this many writes of a kind, one runs unkilled to time that kind again.
RECALIBRATE = 10

State = tuple[str, ...] | None  # the documents a folder publishes; None: no knowledge base


@dataclass(frozen=True)
class KillReport:
    """What ``kill_writes`` found.

    Attributes:
        runs: writes started and SIGKILLed at a random point.
        killed_mid_write: of them, those still running when killed (the rest had finished).
        survived: runs after which the knowledge base was whole: the old or the new documents,
            ``verify="full"`` passed and a search answered.
        old_state, new_state: survivors holding the documents of before / after the write.
        by_kind: runs per write kind.
        seconds: wall time, including the unkilled calibration writes.
        seed: the seed of the choices and kill points.
        failures: what went wrong, one line per failed run.
    """

    runs: int
    killed_mid_write: int
    survived: int
    old_state: int
    new_state: int
    by_kind: dict[str, int]
    seconds: float
    seed: int
    failures: tuple[str, ...]


@dataclass(frozen=True)
class FaultReport:
    """What ``failed_writes`` found.

    Attributes:
        runs: writes run with a fault injected.
        raised: of them, those that raised (the others finished before the fault).
        survived: runs that raised a typed error and left the previous state published and
            searchable, or finished with the new state.
        published_then_raised: raised after the new manifest was in place (the folder's fsync
            after the rename failed): the new state is published and the caller is told that
            it may not be durable. Counted as survived.
        errors: the error types raised, counted.
        seconds: wall time.
        failures: what went wrong, one line per failed run.
    """

    runs: int
    raised: int
    survived: int
    published_then_raised: int
    errors: dict[str, int]
    seconds: float
    failures: tuple[str, ...]


class _Broken(Exception):
    """A knowledge base is not in a state a crash-safe write may leave."""


def observe(kb_dir: Path, embedder) -> State:
    """The documents ``kb_dir`` publishes, after ``open(verify="full")`` and a search; None when
    no knowledge base was ever published there (``open`` must then refuse, typed).

    Raises:
        EngineError: opening or searching failed.
        _Broken: it opened without a manifest, or a search gave no hit or a hit of another document.
    """
    from engine.errors import KnowledgeBaseCorruptError
    from engine.kb import KnowledgeBase
    from engine.kb.manifest import MANIFEST

    if not (kb_dir / MANIFEST).exists():
        try:
            KnowledgeBase.open(kb_dir, embedder=embedder, verify="full").close()
        except KnowledgeBaseCorruptError:
            return None
        raise _Broken(f"{kb_dir} opened without a manifest")
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        sources = tuple(kb.sources())
        hits = kb.search(QUERY, k=3).hits
    if not hits or any(h.source not in sources for h in hits):
        raise _Broken(f"a search gave {[h.source for h in hits]} from a knowledge base of {sources}")
    generations = sorted(p.name for p in kb_dir.glob("gen-*"))
    if len(generations) > MAX_GENERATIONS:
        raise _Broken(f"{len(generations)} generation folders are left: {generations}")
    return sources


def _check(kb_dir: Path, embedder, allowed: Sequence[State]) -> tuple[State, str | None]:
    """``(state, problem)``: the state observed, and what is wrong (None: it is one of ``allowed``)."""
    try:
        state = observe(kb_dir, embedder)
    except _Broken as broken:
        return None, str(broken)
    except Exception as error:  # noqa: BLE001 - any failure to open or search is the finding
        return None, f"{type(error).__name__}: {error}"[:300]
    if state not in allowed:
        return state, f"holds {_names(state)}, neither {' nor '.join(_names(s) for s in allowed)}"
    return state, None


def small_documents(folder: Path, count: int = 6, max_chars: int = 500) -> list[Path]:
    """Write the openings of ``count`` bundled documents (title and first section, at most about
    ``max_chars``) into ``folder``: one chunk each, so that a write takes a fraction of a second."""
    from engine.questions.qa import BUNDLED_SET

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted((BUNDLED_SET / "docs").glob("*.md"))[:count]:
        text = source.read_text(encoding="utf-8")
        cut = text.rfind("\n\n", 0, max_chars)
        target = folder / source.name
        target.write_text(text[:cut if cut > 0 else max_chars].rstrip() + "\n", encoding="utf-8")
        written.append(target)
    return written


def _names(state: State) -> str:
    return "no knowledge base" if state is None else "[" + ", ".join(Path(s).name for s in state) + "]"


# ---------------------------------------------------------------------- kills


def _next_write(rng: random.Random, states: dict[Path, State], pool: list[str], main: Path,
                fresh: Path) -> tuple[Path, Write, State]:
    """A seeded choice of the next write: its folder, the write, and the state it leads to."""
    current = states[main]
    assert current is not None
    absent = [s for s in pool if s not in current]
    kinds = ["build", "rebuild"] + (["add"] if absent else []) + (["remove"] if len(current) > 1 else [])
    kind = rng.choices(kinds, weights=[{"build": 15, "rebuild": 25, "add": 30, "remove": 30}[k] for k in kinds])[0]
    if kind == "build":
        if states[fresh] is not None:  # start over: a first build, into a folder without a knowledge base
            shutil.rmtree(fresh)
            states[fresh] = None
        chosen = tuple(sorted(rng.sample(pool, 2)))
        return fresh, Write("build", str(fresh), chosen), chosen
    if kind == "rebuild":
        options = [c for c in (tuple(sorted(rng.sample(pool, 2))) for _ in range(5)) if c != current]
        chosen = options[0] if options else tuple(sorted(pool[:2]))
        return main, Write("rebuild", str(main), chosen), chosen
    if kind == "add":
        added = rng.choice(absent)
        return main, Write("add", str(main), (added,)), tuple(sorted((*current, added)))
    removed = rng.choice(current)
    return main, Write("remove", str(main), (removed,)), tuple(s for s in current if s != removed)


def kill_writes(work: Path, documents: Sequence[Path], embedder, writer: WriterChild, *, kills: int,
                seconds: float, seed: int, progress: Callable[[str], None] | None = None) -> KillReport:
    """SIGKILL ``kills`` writes at random points (or as many as ``seconds`` allow) and check each time.

    Args:
        work: an empty folder for the knowledge bases.
        documents: at least four small documents to build, add and remove.
        embedder: opens the knowledge bases for the checks (the model ``writer`` loaded).
        writer: runs the writes.
        kills: runs to make; ``seconds`` stops earlier.
        seed: picks the writes and the kill points (as fractions of a write's time); what a kill
            leaves, and so the writes that follow, also depends on timing.
        progress: called with a line now and then.
    """
    started = time.monotonic()
    pool = sorted(str(Path(d).resolve()) for d in documents)
    if len(pool) < 4:
        raise ValueError("kill_writes needs at least four documents")
    rng = random.Random(seed)
    main, fresh = work / "kb", work / "fresh"
    first = writer.run(Write("build", str(main), tuple(pool[:2])))
    if first.error or first.exit_code != 0:
        raise RuntimeError(f"the first build failed: {first.error or first.exit_code}")
    states: dict[Path, State] = {main: tuple(pool[:2]), fresh: None}
    # Timings of unkilled writes of each kind, the last few: the kill points are fractions of their
    # mean. Killed writes are no measure (only the fast ones finish in time), so every
    # ``RECALIBRATE``-th write of a kind runs to its end to be timed again.
    timings: dict[str, list[float]] = {"build": [first.elapsed_s]}
    seen: Counter[str] = Counter(build=1)
    counts: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    failures: list[str] = []
    deadline = started + seconds
    while counts["runs"] < kills and time.monotonic() < deadline:
        folder, write, after = _next_write(rng, states, pool, main, fresh)
        before = states[folder]
        calibrating = seen[write.kind] % RECALIBRATE == 0
        seen[write.kind] += 1
        delay = None if calibrating else rng.uniform(0.0, 1.25) * _mean(timings.get(write.kind, [0.5])[-3:])
        outcome = writer.run(write, kill_after_s=delay)
        if calibrating and outcome.exit_code == 0 and outcome.error is None:
            timings.setdefault(write.kind, []).append(outcome.elapsed_s)
        state, problem = _check(folder, embedder, (before, after))
        if problem is None and (outcome.error or (not outcome.killed and outcome.exit_code != 0)):
            problem = f"the write failed: {outcome.error or f'exit code {outcome.exit_code}'}"
        if problem is not None:
            failures.append(f"{write.kind} {_names(write.sources)} killed after {delay or 0:.3f} s: {problem}")
            state = _recover(writer, folder, pool)
        states[folder] = state
        if calibrating:
            continue
        counts["runs"] += 1
        by_kind[write.kind] += 1
        counts["killed"] += outcome.killed and not outcome.finished
        if problem is None:
            counts["survived"] += 1
            counts["new" if state == after and state != before else "old"] += 1
        if progress and counts["runs"] % 50 == 0:
            progress(f"  {counts['runs']} kills, {len(failures)} failures")
    return KillReport(counts["runs"], counts["killed"], counts["survived"], counts["old"], counts["new"],
                      dict(sorted(by_kind.items())), time.monotonic() - started, seed, tuple(failures))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _recover(writer: WriterChild, folder: Path, pool: list[str]) -> State:
    """Start ``folder`` over with a clean build after a failed check, so that later runs still count."""
    shutil.rmtree(folder, ignore_errors=True)
    writer.run(Write("build", str(folder), tuple(pool[:2])))
    return tuple(pool[:2])


# ---------------------------------------------------------------------- failed writes


def _fault_writes(pool: list[str]) -> list[tuple[str, Callable[[Path], Write], State]]:
    """The writes ``failed_writes`` breaks, each with the state it leads to from the template's."""
    base = tuple(pool[:2])
    return [
        ("rebuild", lambda kb: Write("rebuild", str(kb), tuple(pool[2:4]), FAULT_CHUNK_TOKENS, 0), tuple(pool[2:4])),
        ("add", lambda kb: Write("add", str(kb), (pool[2],)), tuple(sorted((*base, pool[2])))),
        ("remove", lambda kb: Write("remove", str(kb), (pool[0],)), (pool[1],)),
    ]


def _faults(writer: WriterChild, work: Path, template: Path, make: Callable[[Path], Write]) -> list[Fault]:
    """Every ENOSPC point of one write, then file-size limits at each file of the generation it writes."""
    from engine.kb import manifest

    dry = work / "dry"
    shutil.copytree(template, dry)
    counted = writer.run(make(dry), fault=Fault("enospc", 0))
    sizes = [f.size_bytes for f in manifest.read(dry).files.values()]
    shutil.rmtree(dry)
    limits = sorted({512, *(size - 1 for size in sizes if size > 1)})  # the first file written, then each one
    return [Fault("enospc", n) for n in range(1, counted.fault_calls + 1)] + [Fault("fsize", n) for n in limits]


def failed_writes(work: Path, documents: Sequence[Path], embedder, writer: WriterChild, *, seconds: float,
                  progress: Callable[[str], None] | None = None) -> FaultReport:
    """Break a rebuild, an add and a remove at every fault point (see the module docstring).

    Runs the three kinds in turn, one fault each, until all are done or ``seconds`` pass (one
    fault of each kind runs whatever the time).
    ``documents``: at least four documents of a few KB (the bundled ones): chunked in
    ``FAULT_CHUNK_TOKENS`` tokens, two of them make a graph file larger than the chunk store.
    """
    started = time.monotonic()
    pool = sorted(str(Path(d).resolve()) for d in documents)
    template = work / "template"
    built = writer.run(Write("build", str(template), tuple(pool[:2]), FAULT_CHUNK_TOKENS, 0))
    if built.error or built.exit_code != 0:
        raise RuntimeError(f"the template build failed: {built.error or built.exit_code}")
    plans = [(kind, make, after, _faults(writer, work, template, make)) for kind, make, after in _fault_writes(pool)]
    queue = []  # the kinds in turn, so that a short budget still breaks each of them
    for round_ in range(max(len(faults) for *_, faults in plans)):
        queue += [(kind, make, after, faults[round_]) for kind, make, after, faults in plans if round_ < len(faults)]
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    failures: list[str] = []
    for n, (kind, make, after, fault) in enumerate(queue):
        if n >= len(plans) and time.monotonic() > started + seconds:  # the first of each kind runs regardless
            break
        kb_dir = work / f"run-{n}"
        shutil.copytree(template, kb_dir)
        outcome = writer.run(make(kb_dir), fault=fault)
        problem = _judge(outcome, kb_dir, embedder, tuple(pool[:2]), after)
        counts["runs"] += 1
        if outcome.error:
            counts["raised"] += 1
            errors[outcome.error.split(":")[0]] += 1
            counts["published"] += outcome.published_before_fault and problem is None
        if problem:
            failures.append(f"{kind} with {fault.kind}={fault.value}: {problem}")
        else:
            counts["survived"] += 1
        shutil.rmtree(kb_dir, ignore_errors=True)
    if progress:
        progress(f"  {counts['runs']} failed writes, {len(failures)} failures")
    return FaultReport(counts["runs"], counts["raised"], counts["survived"], counts["published"],
                       dict(sorted(errors.items())), time.monotonic() - started, tuple(failures))


def _judge(outcome: Outcome, kb_dir: Path, embedder, before: State, after: State) -> str | None:
    """What is wrong with a write that met a fault (None: nothing)."""
    if outcome.exit_code != 0:
        return f"the writing process ended with exit code {outcome.exit_code}"
    if outcome.error and not outcome.typed:
        return f"untyped error {outcome.error}"
    allowed = (after,) if not outcome.error else (before, after) if outcome.published_before_fault else (before,)
    state, problem = _check(kb_dir, embedder, allowed)
    if problem and outcome.error:
        return f"{problem} after {outcome.error}"
    return problem
