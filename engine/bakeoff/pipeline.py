"""The bake-off end to end: fetch the models, index, fine-tune (or reuse the adapter), compare, report.

Two profiles. ``quick`` (``bakeoff run``'s default) answers on 16 facts spread over
the documents (``engine.questions.qa.select_facts(spread=True)``: train, held-out and
update questions all present) and 16 questions about the unseen documents, trains the
adapter on the same facts (4 epochs; 24 questions also with passages), and times fewer
repetitions: under 10 minutes on 2 CPU cores. ``full`` (``bakeoff run --full``) takes every fact.

An adapter is reused only when its fingerprint matches: the documents (every file under
``docs/``, by name and bytes), the questions and the set's ``set.json`` (its subject is
named in the system prompt the adapter is trained with), the base model's bytes, every
training setting and the engine version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import models
from engine._files import sha256_file, write_text_atomic
from engine._version import __version__
from engine.bakeoff.compare import CompareConfig, ComparisonResult
from engine.bakeoff.latency import Progress
from engine.bakeoff.report import ReportFiles
from engine.errors import InputError, ModelError
from engine.finetune.config import FinetuneConfig
from engine.questions.qa import BUNDLED_SET


@dataclass(frozen=True)
class RunProfile:
    """What one ``bakeoff run`` does: the fine-tune and the comparison, and how long each phase takes.

    ``estimates_s`` are the phase durations measured on this repo's 2-core machine
    (fetch, index, fine-tune, compare): the whole run's ETA is the sum of the phases
    still to come, less those that will do nothing (models cached, adapter reused).
    """

    name: str
    finetune: FinetuneConfig
    compare: CompareConfig
    estimates_s: tuple[float, float, float, float]


_QUICK_FACTS = 16  # trained and graded alike

#: 16 facts spread over the 29 fine-tuned documents; fine-tuning on their questions, the
#: document windows that hold their answers and 24 reader examples (questions with
#: retrieved passages), 4 epochs: about 2.5 minutes on 2 cores. A reader example costs
#: ten questions alone and the hybrid reader needs many (20 of them taught it clearly less
#: than 40), so the quick profile keeps fewer facts to afford them; 3 epochs instead of 4
#: cost the baked mode 25 points on train questions. 16 of the unseen documents' questions
#: are graded too; the cold chunk-state timing is left to --full. The time cap is only a
#: safety net for slow machines: training that a clock stops is not reproducible, so on
#: this repo's machine the epochs end it.
QUICK = RunProfile(
    "quick",
    FinetuneConfig(limit_facts=_QUICK_FACTS, spread_facts=True, document_windows="answers", epochs=4,
                   reader_per_fact=1.5, max_train_seconds=600.0),
    CompareConfig(limit_facts=_QUICK_FACTS, spread_facts=True, timing_questions=8, repetitions=2,
                  splice_questions=8, unseen_facts=16, splice_cold=False, probe_questions=12,
                  update_questions=16),
    estimates_s=(45.0, 6.0, 160.0, 330.0),
)
_STANDARD_FACTS = 100  # >= 100 questions on every split: train, held-out, after update, unseen

#: Sized so that every accuracy rests on at least 100 questions (95 % intervals of about
#: ±9 points instead of ±20): 100 facts spread over the documents, one train and one
#: held-out question each, every wording of their facts that the v2 update changes, every
#: unseen question, and the two reading probes on 100 questions each. The adapter is
#: trained on the same 100 facts with 0.5 reader examples per fact and reading practice
#: on 0.3 per fact from the other facts.
STANDARD = RunProfile(
    "standard",
    FinetuneConfig(limit_facts=_STANDARD_FACTS, spread_facts=True, document_windows="answers", epochs=4,
                   reader_per_fact=0.5, practice_per_fact=0.3, max_train_seconds=1800.0),
    CompareConfig(limit_facts=_STANDARD_FACTS, spread_facts=True, timing_questions=8, repetitions=2,
                  splice_questions=24, splice_cold=False, probe_questions=100),
    estimates_s=(45.0, 6.0, 600.0, 1500.0),
)
#: Every fact of the set and the recipe's defaults (sized for 15 minutes of training), every
#: question graded (the spliced variants on the first 100), 20 questions x 3 timed: about
#: 55 minutes on 2 cores.
FULL = RunProfile("full", FinetuneConfig(), CompareConfig(splice_questions=100, probe_questions=200),
                  estimates_s=(45.0, 6.0, 900.0, 2600.0))
PROFILES = {p.name: p for p in (QUICK, STANDARD, FULL)}


def profile_named(name: str) -> RunProfile:
    """The run profile called ``name``.

    Raises:
        InputError: no profile has that name (the message lists them).
    """
    if name not in PROFILES:
        raise InputError(f"no run profile named {name!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
PHASES = ("fetch models", "index", "fine-tune", "compare")


@dataclass(frozen=True)
class RunResult:
    """What ``run_bakeoff`` produced and where it lies."""

    profile: str
    result: ComparisonResult
    files: ReportFiles
    adapter: Path
    adapter_reused: bool
    phase_seconds: dict[str, float]


class RunProgress:
    """Callbacks of a run; the default says nothing. The CLI draws bars with ETAs from them."""

    def phase(self, index: int, name: str, elapsed_s: float, eta_s: float) -> None:
        """Phase ``index`` (0-based, of ``PHASES``) starts; ``eta_s`` estimates the rest of the run."""

    def message(self, text: str) -> None:
        """A line worth telling the user (what is reused, what was fetched)."""

    def index(self, progress) -> None:
        """A ``kb.BuildProgress`` while indexing."""

    def train(self, progress) -> None:
        """A ``finetune.TrainProgress`` after each optimizer step."""

    def compare(self, phase: str, done: int, total: int) -> None:
        """Answers done in a comparison phase."""


def adapter_fingerprint(config: FinetuneConfig, docs: Path, qa: Path, model: Path) -> str:
    """A digest of everything an adapter depends on: settings, documents, questions, base model, engine.

    Every file under ``docs`` counts (its path in the folder and its bytes), so any
    edited, added, renamed or removed document changes the digest; so do ``qa`` and
    the ``set.json`` beside it (the subject the training system prompt names).

    Raises:
        InputError: ``docs`` is not a folder or ``qa`` is not a file.
    """
    docs, qa = Path(docs), Path(qa)
    if not docs.is_dir():
        raise InputError(f"no documents folder at {docs}: a knowledge set holds docs/, qa.jsonl (and set.json)")
    if not qa.is_file():
        raise InputError(f"no question file at {qa}: a knowledge set holds docs/, qa.jsonl (and set.json)")
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(f"engine {__version__}\n".encode())
    for path in (qa, qa.parent / "set.json"):
        digest.update(f"\n{path.name}\n".encode())
        digest.update(sha256_file(path).encode() if path.is_file() else b"absent")
    for path in sorted(p for p in docs.rglob("*") if p.is_file()):
        digest.update(f"\ndocs/{path.relative_to(docs).as_posix()}\n".encode())
        digest.update(sha256_file(path).encode())
    digest.update(sha256_file(model).encode())
    return digest.hexdigest()


def _stamp(adapter: Path) -> Path:
    return adapter.with_name(adapter.name + ".fingerprint")


def adapter_is_current(adapter: Path, fingerprint: str) -> bool:
    """True when ``adapter`` exists and was stamped with ``fingerprint``."""
    stamp = _stamp(adapter)
    return adapter.is_file() and stamp.is_file() and stamp.read_text() == fingerprint


def _training_record(adapter: Path) -> Path:
    return adapter.with_name(adapter.name + ".training.json")


def training_seconds(adapter: Path) -> float | None:
    """How long ``adapter`` took to train (the recipe's whole run), when the run recorded it."""
    try:
        return float(json.loads(_training_record(adapter).read_text())["total_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compare_and_report(kb: Path, adapter: Path, qa: Path, docs: Path, model: Path, out: Path,
                       config: CompareConfig, threads: int | None, progress: Progress | None = None,
                       say: Callable[[str], None] | None = None,
                       flash_attn: bool | None = None) -> tuple[ComparisonResult, ReportFiles]:
    """Answer the questions in every mode with one Engine and write the report into ``out``.

    ``threads`` None measures the fastest generation thread count first
    (``engine.generation.threads.fastest_thread_count``, a few seconds) and says which it took.
    ``flash_attn`` None measures which flash-attention setting prefills a question over spliced
    chunk states fastest with those threads (``fastest_attention``, a few seconds), True or False
    takes it as given; the report says which, with the probe's times.
    The adapter's training time, when recorded beside it, is the report's retrain setup cost.
    """
    from engine.bakeoff.compare import run_comparison
    from engine.bakeoff.memory import memory_footprint
    from engine.bakeoff.metadata import run_metadata
    from engine.bakeoff.report import write_report
    from engine.facade import Engine
    from engine.generation.kv_cache import ChunkKvCache
    from engine.generation.threads import (
        ATTENTION_PROBE,
        FLASH_MARGIN,
        FLASH_SETTINGS,
        fastest_attention,
        fastest_thread_count,
    )
    from engine.questions.qa import load_questions

    config.validate()  # before minutes of measuring
    questions = load_questions(qa)
    if threads is None:
        threads, probe_ms = fastest_thread_count(model)
        how = f"{threads}, measured fastest (" + ", ".join(f"{n}: {ms:.0f} ms" for n, ms in probe_ms.items()) + ")"
    else:
        how = f"{threads}, as given"
    (say or (lambda _: None))(f"generation threads: {how}")
    if flash_attn is None:
        chosen, flash_ms = fastest_attention(model, n_threads=threads)
        flash_attn = FLASH_SETTINGS[chosen]
        said = "measured fastest" if chosen != "auto" else f"kept: nothing measured more than {FLASH_MARGIN:.0%} faster"
        attention = (f"{chosen}, {said} for {ATTENTION_PROBE} ("
                     + ", ".join(f"{name}: {ms:.1f} ms" for name, ms in flash_ms.items()) + ")")
    else:
        attention = f"flash {'on' if flash_attn else 'off'}, as given"
    (say or (lambda _: None))(f"attention: {attention}")
    memory = memory_footprint(model, adapter, kb)
    # Chunk states in RAM only: the comparison measures a warm cache and, emptying it, a cold one.
    with Engine(model, adapter=adapter, kb=kb, n_threads=threads, kv_cache=ChunkKvCache(None),
                flash_attn=flash_attn) as engine:
        result = run_comparison(engine, questions, config=config, docs_dir=docs, work_dir=out / "freshness",
                                memory=memory, progress=progress, retrain_seconds=training_seconds(adapter))
    context = {**run_metadata(model, threads), "adapter": str(adapter), "knowledge base": str(kb),
               "questions": str(qa), "generation threads": how, "attention": attention}
    return result, write_report(result, out, context=context)


class _Clock:
    """Phase timings and the run's ETA: the estimates of the phases still to come."""

    def __init__(self, estimates_s: tuple[float, ...], progress: RunProgress) -> None:
        self._estimates, self._progress = list(estimates_s), progress
        self._started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._phase_started = self._started

    def skip(self, index: int) -> None:
        """Phase ``index`` will find its work done (cached models, a current adapter)."""
        self._estimates[index] = 0.0

    def start(self, index: int) -> None:
        now = time.perf_counter()
        if index:
            self.seconds[PHASES[index - 1]] = now - self._phase_started
        self._phase_started = now
        self._progress.phase(index, PHASES[index], now - self._started, sum(self._estimates[index:]))

    def finish(self) -> None:
        self.seconds[PHASES[-1]] = time.perf_counter() - self._phase_started


def _index(docs: Path, kb_dir: Path, progress: RunProgress) -> None:
    """Make ``kb_dir`` hold exactly the documents under ``docs``: built once, then kept in step.

    An existing knowledge base (opened with the embedder it records) gets the new and
    changed documents, and loses those no longer under ``docs`` (deleted, or of another
    knowledge set run in the same working folder).
    """
    from engine.kb import KnowledgeBase

    kb, _ = KnowledgeBase.open_or_build(docs, kb_dir, exact=True, progress=progress.index)  # the default embedder
    kb.close()


def run_bakeoff(work: Path, profile: RunProfile = QUICK, *, threads: int | None = None,
                flash_attn: bool | None = None, knowledge_set: Path = BUNDLED_SET,
                progress: RunProgress | None = None) -> RunResult:
    """The whole bake-off on a knowledge set (``docs/``, ``updates/``, ``qa.jsonl``).

    Writes ``work/kb`` (shared by the profiles), ``work/<profile>/adapter.gguf`` with
    its fingerprint, and ``work/<profile>/report``.

    Args:
        work: the working folder (created).
        profile: ``QUICK`` or ``FULL`` (or your own ``RunProfile``).
        threads: generation threads (None: the count measured fastest at the start of the comparison).
        flash_attn: flash attention on or off for every answer (None: the setting measured fastest
            at the start of the comparison, see ``compare_and_report``).
        knowledge_set: a folder laid out like the bundled set.
        progress: callbacks for phases, bars and messages.

    Raises:
        InputError: ``knowledge_set`` lacks ``docs/`` or ``qa.jsonl``, or a comparison setting is out of range.
        MissingExtraError: fine-tuning is needed and the ``[finetune]`` extra is missing.
        EngineError: any component's typed error.
    """
    from engine.finetune import finetune

    profile.compare.validate()  # a bad setting fails now, not after the fine-tune
    progress = progress or RunProgress()
    docs, qa = Path(knowledge_set) / "docs", Path(knowledge_set) / "qa.jsonl"
    if not docs.is_dir() or not qa.is_file():
        raise InputError(f"{knowledge_set} is not a knowledge set: it needs docs/ and qa.jsonl "
                         "(laid out like engine/data/kb; see its README.md)")
    clock = _Clock(profile.estimates_s, progress)
    folder = work / profile.name
    adapter = folder / "adapter.gguf"
    try:
        model = models.model_path(models.DEFAULT_GENERATOR)
        models.model_dir(models.DEFAULT_EMBEDDER)
        clock.skip(0)
    except ModelError:
        model = None  # not fetched yet: the fetch phase does work, and the adapter cannot be current
    fingerprint = adapter_fingerprint(profile.finetune, docs, qa, model) if model else None
    if fingerprint and adapter_is_current(adapter, fingerprint):
        clock.skip(2)

    clock.start(0)
    models.fetch(progress=progress.message)
    model = models.model_path(models.DEFAULT_GENERATOR)
    fingerprint = fingerprint or adapter_fingerprint(profile.finetune, docs, qa, model)

    clock.start(1)
    kb_dir = work / "kb"
    _index(docs, kb_dir, progress)

    clock.start(2)
    folder.mkdir(parents=True, exist_ok=True)
    reused = adapter_is_current(adapter, fingerprint)
    if reused:
        progress.message(f"reusing the adapter {adapter} (same documents, questions, base model and settings)")
    else:
        _stamp(adapter).unlink(missing_ok=True)
        report = finetune(docs, qa, model, adapter, config=profile.finetune, kb=kb_dir, progress=progress.train)
        write_text_atomic(_training_record(adapter), json.dumps({"total_seconds": report.total_seconds}))
        write_text_atomic(_stamp(adapter), fingerprint)

    clock.start(3)
    result, files = compare_and_report(kb_dir, adapter, qa, docs, model, folder / "report", profile.compare,
                                       threads, progress.compare, progress.message, flash_attn)
    clock.finish()
    return RunResult(profile.name, result, files, adapter, reused, clock.seconds)


__all__ = ["FULL", "PHASES", "PROFILES", "QUICK", "STANDARD", "profile_named", "RunProfile", "RunProgress", "RunResult", "adapter_fingerprint",
           "adapter_is_current", "compare_and_report", "run_bakeoff"]
