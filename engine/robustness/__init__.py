"""``bakeoff robustness``: how the engine holds up to damaged files, kills, threads and time.

Each part is a module of its own, also used by the tests:

- :mod:`~engine.robustness.kb_fuzz`: damaged knowledge-base files open as typed errors;
- :mod:`~engine.robustness.gguf_fuzz`: damaged GGUF headers load or fail typed;
- :mod:`~engine.robustness.crash` (with :mod:`~engine.robustness.writes`): knowledge-base
  writes SIGKILLed at random points, and writes that fail (disk full), leave the old or
  the new knowledge base, whole;
- :mod:`~engine.robustness.concurrency`: threads searching, writing and asking at once;
- :mod:`~engine.robustness.memory`: the resident set over many questions.

:func:`run` builds small knowledge bases from the bundled documents in a work folder
and runs the parts in turn, each within its share of ``RobustnessConfig.seconds``
(:data:`SHARES`; the kills and the questions also stop at their counts). Loading
models and building the knowledge bases come on top, about a minute on two cores.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.robustness.concurrency import ConcurrencyReport
from engine.robustness.crash import FaultReport, KillReport
from engine.robustness.kb_fuzz import FuzzReport
from engine.robustness.memory import MemoryReport

#: The share of ``RobustnessConfig.seconds`` each part may take.
SHARES = {"kb_fuzz": 0.08, "gguf_fuzz": 0.1, "kills": 0.25, "write_faults": 0.12, "concurrency": 0.0625,
          "memory": 0.3}


@dataclass(frozen=True)
class RobustnessConfig:
    """What ``run`` does.

    Attributes:
        seconds: time budget of the parts, shared out by :data:`SHARES` (setup comes on top).
        kills: writes to SIGKILL (fewer if their share of the time runs out).
        asks: questions asked while the resident set is watched (fewer if their share runs out).
        seed: seed of the fuzz cases, the writes and the kill points.
        searchers: searching threads beside the writer and the asker.
    """

    seconds: float = 240.0
    kills: int = 200
    asks: int = 1000
    seed: int = 12
    searchers: int = 8

    def validate(self) -> None:
        """Raise ``InputError`` for a value out of range."""
        if not self.seconds > 0:
            raise InputError(f"seconds must be > 0, got {self.seconds!r}")
        for name, least in (("kills", 1), ("asks", 1), ("searchers", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InputError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class RobustnessReport:
    """The figures of one ``run``.

    Attributes:
        config: what was run.
        kb_fuzz, gguf_fuzz: fuzz cases, outcomes and failures.
        kills: writes SIGKILLed and the states they left.
        write_faults: writes made to fail, and the states they left.
        concurrency: threads x seconds of searching, writing and asking, and the faults.
        memory: the resident set over the questions asked.
        failures: failed runs over all parts (0: nothing failed).
        elapsed_s: wall time of the whole run.
    """

    config: RobustnessConfig
    kb_fuzz: FuzzReport
    gguf_fuzz: FuzzReport
    kills: KillReport
    write_faults: FaultReport
    concurrency: ConcurrencyReport
    memory: MemoryReport
    failures: int
    elapsed_s: float


def run(config: RobustnessConfig = RobustnessConfig(), *, work: str | Path | None = None,
        model_path: str | Path | None = None, cache_dir: str | Path | None = None,
        progress: Callable[[str], None] | None = None) -> RobustnessReport:
    """Run every part (see the module docstring) and return the figures.

    Args:
        config: budget, counts and seed.
        work: an empty folder for the knowledge bases and file copies; None uses a temporary one.
        model_path: the GGUF model; None: the default generator from the model cache.
        cache_dir: model cache holding the embedder; None: the default cache.
        progress: called with a line as each part starts and ends.

    Raises:
        InputError: a value of ``config`` is out of range, or ``work`` is not empty.
        ModelError: a model is not in the cache (fetch it with ``bakeoff models fetch``).
    """
    config.validate()
    if work is None:
        with tempfile.TemporaryDirectory(prefix="bakeoff-robustness-") as temporary:
            return run(config, work=temporary, model_path=model_path, cache_dir=cache_dir, progress=progress)
    from engine import models
    from engine.embedding.embedder import Embedder

    started = time.monotonic()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise InputError(f"{work} is not empty: give robustness a new or empty work folder")
    say = progress or (lambda line: None)
    model = Path(model_path) if model_path is not None else models.model_path(models.DEFAULT_GENERATOR)
    embedder = Embedder(cache_dir=cache_dir, threads=1)
    budget = {part: share * config.seconds for part, share in SHARES.items()}
    kb_fuzz_report, gguf_report = _fuzz(work, model, embedder, config, budget, cache_dir, say)
    kills, faults = _crash(work, embedder, config, budget, cache_dir, say)
    concurrency, memory = _load(work, model, embedder, config, budget, cache_dir, say)
    failures = (len(kb_fuzz_report.failures) + len(gguf_report.failures) + len(kills.failures)
                + len(faults.failures) + len(concurrency.faults) + bool(memory.fault))
    return RobustnessReport(config, kb_fuzz_report, gguf_report, kills, faults, concurrency, memory, failures,
                            time.monotonic() - started)


def _fuzz(work: Path, model: Path, embedder, config: RobustnessConfig, budget: dict[str, float], cache_dir,
          say: Callable[[str], None]) -> tuple[FuzzReport, FuzzReport]:
    from engine.robustness.gguf_fuzz import fuzz_gguf
    from engine.robustness.kb_fuzz import build_fuzz_kb, fuzz_kb

    say(f"knowledge-base fuzz ({budget['kb_fuzz']:.0f} s)")
    built = build_fuzz_kb(work / "fuzz-kb", embedder)
    (work / "kb-fuzz").mkdir()
    kb = fuzz_kb(built, work / "kb-fuzz", seconds=budget["kb_fuzz"], seed=config.seed, cache_dir=cache_dir)
    say(f"  {kb.cases} cases, {kb.runs} opens, {len(kb.failures)} failures")
    say(f"GGUF fuzz ({budget['gguf_fuzz']:.0f} s)")
    (work / "gguf-fuzz").mkdir()
    gguf = fuzz_gguf({"model": model}, work / "gguf-fuzz", seconds=budget["gguf_fuzz"], seed=config.seed)
    say(f"  {gguf.skipped}" if gguf.skipped else f"  {gguf.cases} cases, {len(gguf.failures)} failures")
    return kb, gguf


def _crash(work: Path, embedder, config: RobustnessConfig, budget: dict[str, float], cache_dir,
           say: Callable[[str], None]) -> tuple[KillReport, FaultReport]:
    from engine.questions.qa import BUNDLED_SET
    from engine.robustness.crash import failed_writes, kill_writes, small_documents
    from engine.robustness.writes import WriterChild

    writer = WriterChild(cache_dir)
    try:
        say(f"SIGKILLs during writes (up to {config.kills}, {budget['kills']:.0f} s)")
        (work / "kills").mkdir()
        kills = kill_writes(work / "kills", small_documents(work / "small-docs"), embedder, writer,
                            kills=config.kills, seconds=budget["kills"], seed=config.seed, progress=say)
        say(f"  {kills.survived} of {kills.runs} kills survived")
        say(f"failed writes ({budget['write_faults']:.0f} s)")
        (work / "faults").mkdir()
        faults = failed_writes(work / "faults", sorted((BUNDLED_SET / "docs").glob("*.md"))[:4], embedder, writer,
                               seconds=budget["write_faults"], progress=say)
    finally:
        writer.stop()
    return kills, faults


def _load(work: Path, model: Path, embedder, config: RobustnessConfig, budget: dict[str, float], cache_dir,
          say: Callable[[str], None]) -> tuple[ConcurrencyReport, MemoryReport]:
    from engine.robustness.concurrency import EXTRA_DOCUMENT, build_qa_kb, search_write_ask
    from engine.robustness.memory import rss_over_asks

    qa_kb = build_qa_kb(work / "qa-kb", embedder)
    extra = work / "extra.md"
    extra.write_text(EXTRA_DOCUMENT, encoding="utf-8")
    seconds = max(2.0, budget["concurrency"])
    say(f"{config.searchers} searching threads, a writer and an asker ({seconds:.0f} s)")
    concurrency = search_write_ask(qa_kb, extra, seconds=seconds, searchers=config.searchers, model_path=model,
                                   cache_dir=cache_dir)
    say(f"  {concurrency.searches} searches, {concurrency.writes} writes, {concurrency.asks} answers, "
        f"{len(concurrency.faults)} faults")
    say(f"resident set over {config.asks} questions (up to {budget['memory']:.0f} s)")
    memory = rss_over_asks(qa_kb, asks=config.asks, seconds=budget["memory"], model_path=model, cache_dir=cache_dir)
    say(f"  {memory.asks} questions: {memory.growth_mib:+.2f} MiB after the warm-up")
    return concurrency, memory
