"""How fast each mode answers: every stage of an answer timed, summarised per mode (p50/p95).

Latency is measured after a warm-up, over several repetitions of a timing subset, one
mode at a time (switching adapters drops the KV cache, so interleaving would charge
both modes for it). ``cold`` empties the chunk-KV cache before each answer, so the
spliced path's states are computed on the fly.

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


def time_mode(engine: Engine, questions: Sequence[Question], mode: Mode, *, warmup: int, repetitions: int,
              max_tokens: int, say: Progress, splice: SpliceMode | None = None, label: str | None = None,
              cold: bool = False) -> LatencySummary:
    """Latency of ``mode`` (``splice`` for rag) after a warm-up; ``cold`` empties the chunk-KV cache before each."""
    label = label or mode
    if mode != "baked" and splice is None:
        splice = "off"  # the engine's default may be "on" (it has a chunk-KV cache): the mode's row is full prefill
    for q in questions[: warmup]:
        engine.ask(q.question, mode, max_tokens=max_tokens, splice=splice)
    samples: list[Answer] = []
    alone_ms: list[float] = []
    total = len(questions) * repetitions
    for _ in range(repetitions):
        for q in questions:
            if cold and engine.kv_cache is not None:
                engine.kv_cache.clear()
            samples.append(engine.ask(q.question, mode, max_tokens=max_tokens, splice=splice))
            if splice == "on":  # the counterfactual, while the answer's prefix is cached: see the docstring
                alone_ms.append(engine.prefill_without_passages(q.question, mode).prefill_ms)
            say(f"latency/{label}", len(samples), total)
    summary = _latency(label, samples)
    if mode == "baked":
        return dataclasses.replace(summary, prefill_split_p50_ms=_split(summary, None))
    if alone_ms:
        return dataclasses.replace(summary, prefill_split_p50_ms=_split(summary, statistics.median(alone_ms)))
    return summary


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
