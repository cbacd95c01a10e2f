"""The bake-off: every question answered in each mode (rag, baked, hybrid), graded and timed.

Accuracy is measured once per question (greedy decoding is deterministic); latency
is measured after a warm-up, over several repetitions of a timing subset, one mode
at a time (switching adapters drops the KV cache, so interleaving would charge both
modes for it). Freshness is measured on a copy of the documents: the v2 documents
are written over their v1 files and re-indexed, and the changed facts are asked
again, the adapter not retrained; re-indexing them is timed as the setup cost of
absorbing a change, beside the time the adapter took to train. The "unseen" split
asks about documents fine-tuning never saw (``set.json``'s "unseen_documents").

To tell retrieval misses from reading misses, the held-out questions are also
answered in "rag" and "hybrid" mode with retrieval made perfect: the generator is
given only the passage of the question's source document that holds an accepted
answer (modes ``rag-answer-passage`` and ``hybrid-answer-passage`` in the answers;
``reader_accuracy`` in the summary).

With an engine that has a chunk-KV cache (``Engine(kv_cache=...)``), rag and hybrid are
also run in the spliced layout, on the same retrieved passages, both ways:
``<mode>-prefill`` (every token evaluated) and ``<mode>-spliced`` (the passages'
precomputed chunk states spliced in): their accuracy difference is the splice's price
alone. Their latency is timed warm (states cached: ``<mode>-spliced``) and, for rag,
cold (the cache emptied before every question, so states are computed on the fly:
``rag-spliced-cold``).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.answer.types import SpliceMode
from engine.bakeoff.grading import GradedAnswer, grade
from engine.bakeoff.latency import LatencySummary, Progress, TimedWay, time_modes
from engine.bakeoff.memory import MemoryFootprint
from engine.errors import InputError
from engine.questions.qa import Question, answer_passage, round_robin, select_facts, unseen_questions

if TYPE_CHECKING:  # the engine (native core, ONNX Runtime) loads when a comparison runs, not on import
    from engine.answer import Mode
    from engine.facade import Engine

MODES_COMPARED: tuple[Mode, ...] = ("rag", "baked", "hybrid")
#: The splits an answer is graded on: the question set's, and "updated" (after the v2 documents)
SPLITS = ("train", "heldout", "updated", "unseen")

#: rag and hybrid with retrieval made perfect (the reader's own ceiling)
READER_MODES: dict[str, Mode] = {"rag-answer-passage": "rag", "hybrid-answer-passage": "hybrid"}
READER_MODE = "rag-answer-passage"
#: rag and hybrid in the spliced layout: every token evaluated, and the chunk states spliced in
SPLICE_VARIANTS: dict[str, tuple[Mode, SpliceMode]] = {
    "rag-prefill": ("rag", "prefill"), "rag-spliced": ("rag", "on"),
    "hybrid-prefill": ("hybrid", "prefill"), "hybrid-spliced": ("hybrid", "on")}
SPLICED_COLD = "rag-spliced-cold"
@dataclass(frozen=True)
class CompareConfig:
    """What the comparison runs.

    ``train_per_fact`` train questions per fact are graded (all held-out ones always
    are); ``limit_facts`` keeps N facts (None: all), the first N or, with
    ``spread_facts``, N spread over the documents (``select_facts``); ``timing_questions``
    questions are timed ``repetitions`` times per mode after ``warmup`` untimed answers;
    ``answer_passage`` also answers the held-out questions from the passage that holds
    the answer (perfect retrieval), which measures the reader alone; ``splice`` also
    grades and times RAG with spliced chunk states when the engine has a chunk-KV cache,
    on the first ``splice_questions`` graded questions (None: all); ``unseen_facts``
    questions of the "unseen" split are graded in every mode (None: all, 0: none);
    ``splice_cold`` also times spliced RAG with the cache emptied before each question;
    ``probe`` asks whether the readers follow an edited passage and abstain when the
    passages are gone (``engine.bakeoff.probes``), on at most ``probe_questions``
    questions each (None: every graded question of the probed facts); ``freshness`` asks
    every wording of the chosen facts that the v2 documents change, at most
    ``update_questions`` of them (None: all).
    """

    train_per_fact: int = 1
    limit_facts: int | None = None
    spread_facts: bool = False
    timing_questions: int = 20
    repetitions: int = 3
    warmup: int = 3
    max_tokens: int = 48
    freshness: bool = True
    answer_passage: bool = True
    splice: bool = True
    splice_questions: int | None = None
    unseen_facts: int | None = None
    splice_cold: bool = True
    probe: bool = True
    probe_questions: int | None = None
    update_questions: int | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first setting a comparison cannot run with."""
        at_least = {"timing_questions": 1, "repetitions": 1, "max_tokens": 1, "train_per_fact": 0, "warmup": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.unseen_facts is not None and (isinstance(self.unseen_facts, bool)
                                              or not isinstance(self.unseen_facts, int) or self.unseen_facts < 0):
            raise InputError(f"unseen_facts must be None (all) or an integer >= 0, got {self.unseen_facts!r}")
        for name in ("probe_questions", "update_questions"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be None (all) or an integer >= 1, got {value!r}")
        if self.splice_questions is not None and (isinstance(self.splice_questions, bool)
                                                  or not isinstance(self.splice_questions, int)
                                                  or self.splice_questions < 1):
            raise InputError(f"splice_questions must be None (all) or an integer >= 1, got {self.splice_questions!r}")
        if self.limit_facts is not None and (isinstance(self.limit_facts, bool)
                                             or not isinstance(self.limit_facts, int) or self.limit_facts < 1):
            raise InputError(f"limit_facts must be None (every fact) or an integer >= 1, got {self.limit_facts!r}")


@dataclass
class ComparisonResult:
    """Everything the report is written from."""

    config: dict
    answers: list[GradedAnswer] = field(default_factory=list)
    latency: dict[str, LatencySummary] = field(default_factory=dict)
    memory: MemoryFootprint | None = None
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    # rag only: share of questions whose retrieved passages hold an accepted answer
    context_recall: dict[str, float] = field(default_factory=dict)
    # rag and hybrid given only the passage holding the answer (perfect retrieval): {mode: {split: accuracy}}
    reader_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    ttft_ratio_rag_over_baked: float | None = None
    ttft_ratio_spliced_over_baked: float | None = None  # warm chunk-KV cache
    # per mode, over every graded answer: exact, f1, one_sentence, cites_label, citation_precision
    grading: dict[str, dict[str, float]] = field(default_factory=dict)
    # chunk-KV cache over the spliced accuracy pass: hit_rate, states, bytes_per_state, bytes_per_token
    kv_cache: dict[str, float] = field(default_factory=dict)
    # time to absorb a document change: "reindex" (the changed documents, measured here) and
    # "retrain" (the adapter's training, measured when it was trained; absent when unknown)
    setup_seconds: dict[str, float] = field(default_factory=dict)
    # on the edited-value set, per mode: {"n": questions, "passage": share giving the passage's new value,
    # "old": share giving the old trained value}
    follows: dict[str, dict[str, float | int]] = field(default_factory=dict)
    # questions whose passages were removed from the knowledge base, per mode: {"n": questions,
    # "abstained": share saying "not in the sources", "memory": share giving the old value, "wrong": other values}
    abstains: dict[str, dict[str, float | int]] = field(default_factory=dict)
    # facts that could not be edited for the edited-value set: {reason: how many}
    edit_skips: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def select_questions(questions: Sequence[Question], config: CompareConfig) -> list[Question]:
    """The graded questions: every held-out one and ``train_per_fact`` train ones per fact."""
    chosen: list[Question] = []
    train_taken: dict[str, int] = {}
    for q in select_facts(list(questions), config.limit_facts, spread=config.spread_facts):
        if q.split == "heldout":
            chosen.append(q)
        elif q.split == "train" and train_taken.get(q.fact_id, 0) < config.train_per_fact:
            train_taken[q.fact_id] = train_taken.get(q.fact_id, 0) + 1
            chosen.append(q)
    return chosen


def run_comparison(
    engine: Engine,
    questions: Sequence[Question],
    *,
    config: CompareConfig = CompareConfig(),
    docs_dir: Path | None = None,
    work_dir: Path | None = None,
    memory: MemoryFootprint | None = None,
    progress: Progress | None = None,
    retrain_seconds: float | None = None,
) -> ComparisonResult:
    """Grade and time every mode of ``engine`` on ``questions``.

    Args:
        engine: an Engine with both an adapter and a knowledge base (so all three modes).
        questions: the whole set (selection follows ``config``).
        docs_dir: the v1 documents folder (its parent holds ``updates/``), for freshness.
        work_dir: scratch folder for the freshness copy (created, then removed).
        memory: the footprint measured while the engine was loaded.
        progress: called as answers are produced.
        retrain_seconds: how long the adapter took to train (the setup cost of a document
            change for baked and hybrid), when known.

    Raises:
        InputError: a setting of ``config`` is out of range, ``engine`` lacks a mode, or no
            question is left to grade.
    """
    config.validate()
    missing = {"rag", "baked"} - set(engine.modes)
    if missing:
        raise InputError(f"the comparison answers in both modes; this engine has no {' or '.join(sorted(missing))} "
                         "mode: give Engine(kb=..., adapter=...)")
    started = time.perf_counter()
    say = progress or (lambda *_: None)
    result = ComparisonResult(config=asdict(config), memory=memory)
    graded = select_questions(questions, config)
    if not graded:
        raise InputError("no question left to grade: the set holds no train or held-out question of the chosen facts")
    modes = [m for m in MODES_COMPARED if m in engine.modes]
    unseen = unseen_questions(list(questions), config.unseen_facts) if config.unseen_facts != 0 else []
    for mode in modes:
        for done, q in enumerate([*graded, *unseen], 1):
            result.answers.append(grade(engine, q, mode, q.split, q.answers, config.max_tokens))
            say(f"accuracy/{mode}", done, len(graded) + len(unseen))
    if config.answer_passage and engine.kb is not None:
        result.answers += _grade_reader(engine, [q for q in graded if q.split == "heldout"], modes, config, say)
    splicing = config.splice and engine.kv_cache is not None
    if splicing:
        result.answers += _grade_spliced(engine, graded[: config.splice_questions], modes, config, say,
                                         result.kv_cache)
    ways = [TimedWay(mode, mode) for mode in modes]
    if splicing:
        ways += [TimedWay(f"{mode}-spliced", mode, "on") for mode in modes if mode != "baked"]
        if config.splice_cold:
            ways.append(TimedWay(SPLICED_COLD, "rag", "on", cold=True))
    result.latency.update(time_modes(engine, graded[: config.timing_questions], ways, warmup=config.warmup,
                                     repetitions=config.repetitions, max_tokens=config.max_tokens, say=say))
    if config.freshness and docs_dir is not None:
        # every wording of each selected fact that an update changes: the split is then big enough to tell
        selected = {q.fact_id for q in graded}
        wordings: dict[str, list[Question]] = {}
        for q in questions:
            if q.fact_id in selected and q.changes_on_update:
                wordings.setdefault(q.fact_id, []).append(q)
        # capped: one wording of every changed fact before a second of any
        changed = round_robin(list(wordings.values()), config.update_questions or len(questions))
        result.answers += _freshness(engine, changed, modes, docs_dir, work_dir, config, say, result.setup_seconds)
    if config.probe and docs_dir is not None:
        from engine.bakeoff.probes import probe_reading

        scratch = Path(work_dir) / "probes" if work_dir else Path(tempfile.mkdtemp(prefix="bakeoff-probes-"))
        probes = probe_reading(engine, graded, docs_dir, scratch, grade=functools.partial(grade, max_tokens=config.max_tokens),
                               limit=config.probe_questions, say=say)
        result.answers += probes.answers
        result.follows, result.abstains, result.edit_skips = probes.follows, probes.abstains, probes.skips
    if retrain_seconds is not None:
        result.setup_seconds["retrain"] = retrain_seconds
    _summarise(result)
    result.seconds = time.perf_counter() - started
    return result


def _grade_reader(engine: Engine, questions: Sequence[Question], modes: Sequence[Mode], config: CompareConfig,
                  say: Progress) -> list[GradedAnswer]:
    """Answer each question from the one passage that holds its answer (perfect retrieval), in rag and hybrid."""
    graded = []
    assert engine.kb is not None  # the caller grades the reader only with a knowledge base
    passages = [answer_passage(engine.kb, q) for q in questions]
    for label, mode in READER_MODES.items():
        if mode not in modes:
            continue
        for done, (q, passage) in enumerate(zip(questions, passages), 1):
            if passage is not None:
                graded.append(grade(engine, q, mode, q.split, q.answers, config.max_tokens,
                                     passages=[passage], label=label))
            say(f"accuracy/{label}", done, len(questions))
    return graded


def _grade_spliced(engine: Engine, questions: Sequence[Question], modes: Sequence[Mode], config: CompareConfig,
                   say: Progress, kv_summary: dict[str, float]) -> list[GradedAnswer]:
    """Each question in the spliced layout, prefilled and spliced, on the same retrieved passages."""
    assert engine.kb is not None and engine.kv_cache is not None  # the caller checks
    graded = []
    # Searched once: every variant is given exactly these passages.
    hits = [engine.retrieve(q.question).hits for q in questions]
    for label, (mode, splice) in SPLICE_VARIANTS.items():
        if mode not in modes:
            continue
        before = engine.kv_cache.stats()
        for done, (q, passages) in enumerate(zip(questions, hits), 1):
            graded.append(grade(engine, q, mode, q.split, q.answers, config.max_tokens, passages=passages,
                                 label=label, splice=splice))
            say(f"accuracy/{label}", done, len(questions))
        if label == "rag-spliced":
            after = engine.kv_cache.stats()
            found = (after.ram_hits + after.disk_hits) - (before.ram_hits + before.disk_hits)
            lookups = found + after.misses - before.misses
            kv_summary["hit_rate"] = found / lookups if lookups else 0.0
            kv_summary.update(after.state_sizes())
    return graded


def _freshness(engine: Engine, changed: Sequence[Question], modes: Sequence[Mode], docs_dir: Path,
               work_dir: Path | None, config: CompareConfig, say: Progress,
               setup_seconds: dict[str, float]) -> list[GradedAnswer]:
    """Re-index the v2 documents over a copy of v1 (timed: ``setup_seconds["reindex"]``) and ask
    the changed facts again.

    The engine keeps its own knowledge base: "rag" and "hybrid" answers are given the hits
    of the re-indexed copy (``Engine.ask(passages=...)``), retrieved with the engine's own
    ``k`` and MMR weight from a copy chunked as the engine's knowledge base was.
    """
    if not changed or engine.kb is None:
        return []
    from engine.bakeoff.probes import knowledge_base_copy

    scratch = Path(work_dir) if work_dir else docs_dir.parent / ".freshness"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        docs = scratch / "docs"
        updates = sorted({q.update_source for q in changed if q.update_source})
        with knowledge_base_copy(engine.kb, docs_dir, scratch) as kb:
            for update in updates:
                shutil.copyfile(docs_dir.parent / update, docs / Path(update).name)
            reindex_started = time.perf_counter()
            kb.add([docs / Path(u).name for u in updates])
            setup_seconds["reindex"] = time.perf_counter() - reindex_started
            graded = []
            for mode in modes:
                for done, q in enumerate(changed, 1):
                    hits = engine.retrieve(q.question, kb=kb).hits if mode != "baked" else None
                    graded.append(grade(engine, q, mode, "updated", q.answers_after_update, config.max_tokens,
                                         passages=hits))
                    say(f"freshness/{mode}", done, len(changed))
        return graded
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summarise(result: ComparisonResult) -> None:
    present = {a.mode for a in result.answers}
    for mode in (m for m in (*MODES_COMPARED, *SPLICE_VARIANTS) if m in present):
        result.accuracy[mode] = {}
        result.counts[mode] = {}
        for split in SPLITS:
            rows = [a for a in result.answers if a.mode == mode and a.split == split]
            result.counts[mode][split] = len(rows)
            if rows:
                result.accuracy[mode][split] = sum(a.correct for a in rows) / len(rows)
                if mode == "rag":
                    result.context_recall[split] = sum(bool(a.answer_in_context) for a in rows) / len(rows)
    for mode in present:
        # the probes' answers (edited values, removed passages) are graded by their own rules
        rows = [a for a in result.answers if a.mode == mode and a.split in SPLITS]
        if not rows:
            continue
        grading = {"exact": _mean(a.exact for a in rows), "f1": _mean(a.f1 for a in rows),
                   "one_sentence": _mean(a.one_sentence for a in rows)}
        if any(a.cites_label is not None for a in rows):
            grading["cites_label"] = _mean(bool(a.cites_label) for a in rows)
            precise = [a.citation_precision for a in rows if a.citation_precision is not None]
            grading["citation_precision"] = _mean(precise) if precise else 0.0
        # the format asked for: one sentence, and where passages were given, citing one of them
        grading["format"] = _mean(a.one_sentence and a.cites_label is not False for a in rows)
        result.grading[mode] = grading
    for label in READER_MODES:
        for split in ("train", "heldout"):
            rows = [a for a in result.answers if a.mode == label and a.split == split]
            if rows:
                result.reader_accuracy.setdefault(label, {})[split] = sum(a.correct for a in rows) / len(rows)
                result.counts.setdefault(label, {})[split] = len(rows)
    rag, baked = result.latency.get("rag"), result.latency.get("baked")
    if rag and baked and baked.ttft_p50_ms > 0:
        result.ttft_ratio_rag_over_baked = rag.ttft_p50_ms / baked.ttft_p50_ms
    spliced = result.latency.get("rag-spliced")
    if spliced and baked and baked.ttft_p50_ms > 0:
        result.ttft_ratio_spliced_over_baked = spliced.ttft_p50_ms / baked.ttft_p50_ms


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else 0.0
