"""How fast each mode answers: every stage of an answer timed, summarised per mode (p50/p95).

Latency is measured after a warm-up, over several repetitions of a timing subset, in
rounds (:func:`time_modes`): each round times every way once, one way at a time over all
the questions (switching adapters drops the KV cache, so interleaving answer by answer
would charge every way for it; one untimed answer starts each way's turn), in forward
order in even rounds and backward in odd ones. A way's samples then come from the same
stretches of the run as the others', so a machine that warms up or gets busy mid-run
moves every way's p50 alike, and the ratios between ways hold. ``cold`` empties the
chunk-KV cache before each answer, so the spliced path's states are computed on the fly.

A spliced answer's prefill is split in two (``PREFILL_SPLIT``): right after each timed
spliced answer the same question is prefilled after the same cached prefix with no passage
(``Engine.prefill_without_passages``: same adapter, same settings), which is the question's
own tokens; the rest of the answer's prefill (p50 less that p50) is the question's attention
over the spliced positions (and llama.cpp's K-shift of states it moves itself, counted in
``generation.k_shifted_tokens``). llama.cpp offers no cheaper direct split: its perf counters
time whole decodes, and an eval callback stopping at the attention nodes makes the scheduler
compute each decode's graph in pieces (ggml-backend.cpp, one synchronised launch per piece, two
per layer), which changes what is timed, and would time attention over the prefix and the
question itself as well. A baked answer's prefill is all its own tokens.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.answer.types import SpliceMode
from engine.questions.qa import Question

if TYPE_CHECKING:  # the engine (native core, ONNX Runtime) loads when a comparison runs, not on import
    from engine.answer import Answer, AnswerTimings, Mode
    from engine.facade import Engine

Progress = Callable[[str, int, int], None]  # (phase, done, total)
#: The stages of an answer, in the order they run, named by where they sit in ``AnswerTimings``
#: ("search.embed_ms" is ``timings.search.embed_ms``; 0 when nothing was searched).
STAGES = ("search.embed_ms", "search.dense_search_ms", "search.lexical_search_ms", "search.scoring_ms",
          "prompt_build_ms", "kv_ms", "generation.splice_ms", "generation.prefill_ms", "generation.decode_ms")
#: ``generation.prefill_ms`` split in two (see the module's docstring): the question's own tokens, and the
#: question's attention over the spliced positions. They add up to the prefill's p50.
PREFILL_SPLIT = ("prefill.question_ms", "prefill.spliced_positions_ms")


@dataclass(frozen=True)
class LatencySummary:
    """Latency of one mode over the timed answers (milliseconds)."""

    mode: str
    samples: int
    stage_p50_ms: dict[str, float]
    ttft_p50_ms: float
    ttft_p95_ms: float
    total_p50_ms: float
    total_p95_ms: float
    prompt_tokens_p50: float
    decode_tokens_p50: float
    #: ``PREFILL_SPLIT`` -> p50 ms; spliced modes and baked (all its own tokens) only, else empty
    prefill_split_p50_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TimedWay:
    """One way of answering to time: ``mode`` with ``splice`` (None: full prefill for rag and hybrid),
    reported under ``label``; ``cold`` empties the chunk-KV cache before each answer."""

    label: str
    mode: Mode
    splice: SpliceMode | None = None
    cold: bool = False


def time_modes(engine: Engine, questions: Sequence[Question], ways: Sequence[TimedWay], *, warmup: int,
               repetitions: int, max_tokens: int, say: Progress) -> dict[str, LatencySummary]:
    """Latency of every way in ``ways``, timed in ``repetitions`` rounds (see the module's docstring).

    ``warmup`` untimed answers per way precede the first round (the model's and the adapters' pages,
    the query cache, the thread pool); after that each way's turn starts with one untimed answer
    (max 1 token) that puts its adapter and prefix in place, as a run of that way's questions would.
    """
    for way in ways:
        for q in questions[: warmup]:
            engine.ask(q.question, way.mode, max_tokens=max_tokens, splice=_splice(way))
    samples: dict[str, list[Answer]] = {way.label: [] for way in ways}
    alone_ms: dict[str, list[float]] = {way.label: [] for way in ways}
    total = len(questions) * repetitions
    for round_ in range(repetitions):
        for way in (ways if round_ % 2 == 0 else list(reversed(ways))):
            splice = _splice(way)
            engine.ask(questions[-1].question, way.mode, max_tokens=1, splice=splice)
            for q in questions:
                if way.cold and engine.kv_cache is not None:
                    engine.kv_cache.clear()
                samples[way.label].append(engine.ask(q.question, way.mode, max_tokens=max_tokens, splice=splice))
                if splice == "on":  # the counterfactual, while the answer's prefix is cached: see the docstring
                    alone_ms[way.label].append(engine.prefill_without_passages(q.question, way.mode).prefill_ms)
                say(f"latency/{way.label}", len(samples[way.label]), total)
    summaries = {}
    for way in ways:
        summary = _latency(way.label, samples[way.label])
        if way.mode == "baked":
            summary = dataclasses.replace(summary, prefill_split_p50_ms=_split(summary, None))
        elif alone_ms[way.label]:
            summary = dataclasses.replace(summary,
                                          prefill_split_p50_ms=_split(summary, statistics.median(alone_ms[way.label])))
        summaries[way.label] = summary
    return summaries


def time_mode(engine: Engine, questions: Sequence[Question], mode: Mode, *, warmup: int, repetitions: int,
              max_tokens: int, say: Progress, splice: SpliceMode | None = None, label: str | None = None,
              cold: bool = False) -> LatencySummary:
    """Latency of one way alone (:func:`time_modes` with one ``TimedWay``)."""
    way = TimedWay(label or mode, mode, splice, cold)
    return time_modes(engine, questions, [way], warmup=warmup, repetitions=repetitions, max_tokens=max_tokens,
                      say=say)[way.label]


def _splice(way: TimedWay) -> SpliceMode | None:
    """The splice mode a way's answers are asked with: rag and hybrid without one are full prefill (the
    engine's own default may be "on" when it has a chunk-KV cache)."""
    return "off" if way.mode != "baked" and way.splice is None else way.splice


def _split(summary: LatencySummary, question_ms: float | None) -> dict[str, float]:
    """``PREFILL_SPLIT`` of ``summary``'s prefill p50 given the question's own p50 (None: the whole prefill)."""
    prefill = summary.stage_p50_ms["generation.prefill_ms"]
    own = prefill if question_ms is None else question_ms
    return dict(zip(PREFILL_SPLIT, (own, prefill - own)))


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stage_ms(timings: AnswerTimings, stage: str) -> float:
    """One of ``STAGES`` of an answer's timings, in ms; 0 for a search stage when nothing was searched."""
    return float(timings.flat().get(stage) or 0.0)


def _latency(mode: str, samples: Sequence[Answer]) -> LatencySummary:
    timings = [a.timings for a in samples]
    stage_p50 = {stage: statistics.median(stage_ms(t, stage) for t in timings) for stage in STAGES}
    ttft = [t.ttft_ms for t in timings]
    total = [t.total_ms for t in timings]
    return LatencySummary(
        mode=mode, samples=len(samples), stage_p50_ms=stage_p50,
        ttft_p50_ms=_percentile(ttft, 0.5), ttft_p95_ms=_percentile(ttft, 0.95),
        total_p50_ms=_percentile(total, 0.5), total_p95_ms=_percentile(total, 0.95),
        prompt_tokens_p50=statistics.median(t.generation.prompt_tokens for t in timings),
        decode_tokens_p50=statistics.median(t.generation.decode_tokens for t in timings),
    )
