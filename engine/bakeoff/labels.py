"""What the report and the plots call things, in which order they show them, and the intervals both print.

Shared by ``engine.bakeoff.report`` (JSON, Markdown) and ``engine.bakeoff.plots`` (PNG), so a
table and a plot of one run name and order every mode, split and stage the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.bakeoff.compare import READER_MODES, ComparisonResult
from engine.bakeoff.stats import wilson_interval

#: How a stage of ``STAGES`` (and of ``PREFILL_SPLIT``) is named in the tables and plots.
STAGE_LABELS = {
    "search.embed_ms": "embed", "search.dense_search_ms": "dense search",
    "search.lexical_search_ms": "lexical search", "search.scoring_ms": "scoring",
    "prompt_build_ms": "prompt build", "kv_ms": "chunk states (lookup/compute)",
    "generation.splice_ms": "KV restore + shift", "generation.prefill_ms": "prefill", "generation.decode_ms": "decode",
    # latency.PREFILL_SPLIT: the prefill's two parts
    "prefill.question_ms": "prefill: the question's own tokens",
    "prefill.spliced_positions_ms": "prefill: attention over spliced positions",
}

_RETRIEVAL_STAGES = ("search.embed_ms", "search.dense_search_ms", "search.lexical_search_ms", "search.scoring_ms")

#: Rows of the summary, in order; a row is shown when the result has it.
ROWS = ("rag", "baked", "hybrid", "rag-prefill", "rag-spliced", "rag-spliced-cold", "hybrid-prefill",
         "hybrid-spliced")

#: The graded splits (``compare.SPLITS``), as the tables and plots name them.
SPLIT_LABELS = {"train": "train", "heldout": "held-out", "updated": "after update", "unseen": "unseen docs"}

#: The shares of ``ComparisonResult.follows`` and ``.abstains``, as the report names them.
FOLLOWS = {"passage": "gives the passage's new value", "old": "gives the old trained value"}

ABSTAINS = {"abstained": "says not in the sources", "memory": "old value from memory", "wrong": "another value"}


def interval(share: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson interval of ``share`` of ``n`` answers: (low, high) as fractions."""
    return wilson_interval(round(share * n), n)


def accuracy_intervals(result: ComparisonResult) -> dict[str, dict[str, tuple[float, float]]]:
    """The 95 % Wilson interval of every accuracy, the reader ceilings' too: {mode: {split: (low, high)}}."""
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for mode, accuracy in (*result.accuracy.items(), *result.reader_accuracy.items()):
        counts = result.counts.get(mode, {})
        intervals[mode] = {split: interval(share, counts[split]) for split, share in accuracy.items()
                           if counts.get(split)}
    return intervals


def share_intervals(result: ComparisonResult) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """The 95 % Wilson interval of every share of ``follows`` and ``abstains``: {"follows": {mode: {share: ...}}}."""
    return {name: {mode: {key: interval(float(shares[key]), int(shares["n"])) for key in keys if key in shares}
                   for mode, shares in table.items() if shares.get("n")}
            for name, table, keys in (("follows", result.follows, FOLLOWS), ("abstains", result.abstains, ABSTAINS))
            if table}


def share_cell(share: float, n: int) -> str:
    """A share with its count and 95 % interval: ``75.0% (12/16, 95% CI 50.5–89.8)``; "n/a" when nothing was asked."""
    if not n:
        return "n/a"
    low, high = interval(share, n)
    return f"{share * 100:.1f}% ({round(share * n)}/{n}, 95% CI {low * 100:.1f}–{high * 100:.1f})"


def metadata_value(key: str, value: object) -> str:
    """A run fact as printed; a missing one says why it is missing."""
    if value is None:
        return "none (not a git checkout)" if key == "commit" else "unknown"
    return str(value)


def ordered(modes: Iterable[str]) -> list[str]:
    """``modes`` in the report's row order, the reader ceilings after the rows, anything else last."""
    order = [*ROWS, *READER_MODES]
    modes = set(modes)
    return [m for m in order if m in modes] + sorted(modes - set(order))


def timed_modes(result: ComparisonResult) -> list[str]:
    """The modes with a latency summary, in ``ordered`` order."""
    return ordered(result.latency)


def retrieval_ms(result: ComparisonResult, mode: str) -> float:
    """What retrieval (embed to scoring) costs ``mode`` before the prompt: the sum of its stages' p50 (ms)."""
    return sum(result.latency[mode].stage_p50_ms.get(stage, 0.0) for stage in _RETRIEVAL_STAGES)
