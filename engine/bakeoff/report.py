"""Writing a comparison down: JSON for machines, Markdown for people, PNG plots.

Every figure in the Markdown report is computed from the same ``ComparisonResult``
that is saved as JSON beside it. Every accuracy and share carries its 95 % Wilson
interval (``stats.wilson_interval``), and every plot a footer naming the model, CPU,
threads, commit and date that made it (``metadata.run_metadata``).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine._files import write_text_atomic
from engine.bakeoff.compare import READER_MODES, STAGES, ComparisonResult
from engine.bakeoff.metadata import run_metadata
from engine.bakeoff.stats import half_width, wilson_interval

if TYPE_CHECKING:  # matplotlib loads when plots are drawn, not on import
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_STAGE_LABELS = {
    "search.embed_ms": "embed", "search.dense_search_ms": "dense search",
    "search.lexical_search_ms": "lexical search", "search.scoring_ms": "scoring",
    "prompt_build_ms": "prompt build", "kv_ms": "chunk states (lookup/compute)",
    "generation.splice_ms": "KV restore + shift", "generation.prefill_ms": "prefill", "generation.decode_ms": "decode",
}
_RETRIEVAL_STAGES = ("search.embed_ms", "search.dense_search_ms", "search.lexical_search_ms", "search.scoring_ms")
#: Retrieval in blues, generation in oranges, the prompt in grey: what retrieval costs beside prefill shows by colour.
_STAGE_COLOURS = {
    "search.embed_ms": "#08519c", "search.dense_search_ms": "#3182bd", "search.lexical_search_ms": "#6baed6",
    "search.scoring_ms": "#9ecae1", "prompt_build_ms": "#bdbdbd", "kv_ms": "#fdd0a2",
    "generation.splice_ms": "#fdae6b", "generation.prefill_ms": "#e6550d", "generation.decode_ms": "#a63603",
}
#: Rows of the summary, in order; a row is shown when the result has it.
_ROWS = ("rag", "baked", "hybrid", "rag-prefill", "rag-spliced", "rag-spliced-cold", "hybrid-prefill",
         "hybrid-spliced")
#: rag's family in blues, baked orange, hybrid's family in greens; the reader ceilings hatched.
_MODE_COLOURS = {
    "rag": "#3182bd", "rag-prefill": "#9ecae1", "rag-spliced": "#08519c", "rag-spliced-cold": "#6baed6",
    "rag-answer-passage": "#c6dbef", "baked": "#fd8d3c", "hybrid": "#31a354", "hybrid-prefill": "#a1d99b",
    "hybrid-spliced": "#006d2c", "hybrid-answer-passage": "#c7e9c0",
}
_SPLITS = {"train": "train", "heldout": "held-out", "updated": "after update", "unseen": "unseen docs"}
#: How long each mode takes to absorb a changed document: the setup cost it pays.
_SETUP = {"rag": "reindex", "baked": "retrain", "hybrid": "reindex"}
#: The shares of ``ComparisonResult.follows`` and ``.abstains``, as the report names them.
_FOLLOWS = {"passage": "gives the passage's new value", "old": "gives the old trained value"}
_ABSTAINS = {"abstained": "says not in the sources", "memory": "old value from memory", "wrong": "another value"}
_SHARE_COLOURS = {"passage": "#31a354", "old": "#de2d26", "abstained": "#31a354", "memory": "#de2d26",
                  "wrong": "#969696"}
#: The run facts printed first in the Markdown and in every plot's footer.
_METADATA = ("model", "cpu", "threads", "commit", "date", "platform")
_STUB = 1.0  # % of the axis: a zero bar is drawn this wide so that it is seen
_FOOTER_CHARS_PER_INCH = 17  # at the footer's 7 points; a longer footer is wrapped at its separators


@dataclass(frozen=True)
class ReportFiles:
    """Where a written report lives."""

    directory: Path
    json_path: Path
    markdown_path: Path
    plots: tuple[Path, ...]


def write_report(result: ComparisonResult, out_dir: str | os.PathLike[str], *,
                 context: dict | None = None) -> ReportFiles:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``.

    ``context`` describes the run (``metadata.run_metadata()`` and anything else worth
    printing); run facts it lacks (CPU, commit, date, platform) are gathered here.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    context = {**run_metadata(), **(context or {})}
    payload = {"context": {**context, "python": platform.python_version()}, **result.to_dict(),
               "intervals": accuracy_intervals(result), "share_intervals": share_intervals(result)}
    json_path = write_text_atomic(directory / "report.json", json.dumps(payload, indent=2, default=str))
    plots = []
    for name, fig in figures(result, context).items():
        fig.savefig(directory / name, dpi=110)
        plots.append(directory / name)
    markdown = render_markdown(result, context, [p.name for p in plots])
    markdown_path = write_text_atomic(directory / "report.md", markdown)
    return ReportFiles(directory, json_path, markdown_path, tuple(plots))


# ---- numbers


def _interval(share: float, n: int) -> tuple[float, float]:
    return wilson_interval(round(share * n), n)


def accuracy_intervals(result: ComparisonResult) -> dict[str, dict[str, tuple[float, float]]]:
    """The 95 % Wilson interval of every accuracy, the reader ceilings' too: {mode: {split: (low, high)}}."""
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for mode, accuracy in (*result.accuracy.items(), *result.reader_accuracy.items()):
        counts = result.counts.get(mode, {})
        intervals[mode] = {split: _interval(share, counts[split]) for split, share in accuracy.items()
                           if counts.get(split)}
    return intervals


def share_intervals(result: ComparisonResult) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """The 95 % Wilson interval of every share of ``follows`` and ``abstains``: {"follows": {mode: {share: ...}}}."""
    return {name: {mode: {key: _interval(float(shares[key]), int(shares["n"])) for key in keys if key in shares}
                   for mode, shares in table.items() if shares.get("n")}
            for name, table, keys in (("follows", result.follows, _FOLLOWS), ("abstains", result.abstains, _ABSTAINS))
            if table}


def share_cell(share: float, n: int) -> str:
    """A share with its count and 95 % interval: ``75.0% (12/16, 95% CI 50.5–89.8)``; "n/a" when nothing was asked."""
    if not n:
        return "n/a"
    low, high = _interval(share, n)
    return f"{share * 100:.1f}% ({round(share * n)}/{n}, 95% CI {low * 100:.1f}–{high * 100:.1f})"


def interval_widths(result: ComparisonResult) -> str:
    """One sentence: how far an accuracy is known at this run's sample sizes (half the interval around 50 %)."""
    sizes = sorted({n for counts in result.counts.values() for n in counts.values() if n}, reverse=True)
    if not sizes:
        return ""
    if len(sizes) > 5:
        sizes = [*sizes[:4], sizes[-1]]
    widths = ", ".join(f"±{half_width(n) * 100:.0f} points at {n} question{'s' if n > 1 else ''}" for n in sizes)
    return (f"The intervals are 95% Wilson intervals: at the sample sizes of this run an accuracy near 50% is known "
            f"to about {widths} (less near 0% or 100%), so a smaller difference between two modes is not evidence.")


# ---- Markdown


def summary_table(result: ComparisonResult) -> str:
    """The headline table: per mode, accuracy on every split, the grading and format, latency,
    memory and setup cost (Markdown)."""
    lines = ["| mode | train | held-out | after update | unseen docs | exact | token F1 | format "
             "| citation precision | TTFT p50 / p95 (ms) | total p50 / p95 (ms) | prompt tokens p50 | memory (MB) "
             "| absorb a change (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in [m for m in _ROWS if m in result.accuracy or m in result.latency]:
        acc = result.accuracy.get(mode, {})
        counts = result.counts.get(mode, {})
        lat = result.latency.get(mode)
        grading = result.grading.get(mode, {})

        def cell(split: str) -> str:
            return share_cell(acc[split], counts.get(split, 0)) if split in acc else "n/a"

        def share(key: str) -> str:
            return f"{grading[key] * 100:.1f}%" if key in grading else "n/a"

        timing = (f"{lat.ttft_p50_ms:.0f} / {lat.ttft_p95_ms:.0f} | {lat.total_p50_ms:.0f} / {lat.total_p95_ms:.0f} "
                  f"| {lat.prompt_tokens_p50:.0f}") if lat else "n/a | n/a | n/a"
        memory = result.memory.mode_mb(mode) if result.memory else None
        setup = result.setup_seconds.get(_SETUP.get(mode, ""))
        setup_cell = f"{setup:.1f} ({_SETUP[mode]})" if setup is not None else "n/a"
        lines.append(f"| {mode} | {cell('train')} | {cell('heldout')} | {cell('updated')} | {cell('unseen')} "
                     f"| {share('exact')} | {share('f1')} | {share('format')} | {share('citation_precision')} "
                     f"| {timing} | {f'{memory:.0f}' if memory is not None else 'n/a'} | {setup_cell} |")
    widths = interval_widths(result)
    if widths:
        lines += ["", widths]
    if result.ttft_ratio_rag_over_baked is not None:
        lines.append("")
        lines.append(f"Measured TTFT ratio RAG / baked (p50): **{result.ttft_ratio_rag_over_baked:.2f}**")
    if result.ttft_ratio_spliced_over_baked is not None:
        lines.append("")
        lines.append(f"Measured TTFT ratio RAG with spliced chunk states (warm cache) / baked (p50): "
                     f"**{result.ttft_ratio_spliced_over_baked:.2f}**")
    if result.kv_cache:
        kv = result.kv_cache
        lines.append("")
        lines.append(f"Chunk-KV cache over the spliced pass: hit rate {kv.get('hit_rate', 0) * 100:.1f}%, "
                     f"{kv.get('states', 0):.0f} states, {kv.get('bytes_per_state', 0) / 1e6:.2f} MB per state, "
                     f"{kv.get('bytes_per_token', 0):.0f} bytes per token.")
    return "\n".join(lines)


def grading_table(result: ComparisonResult) -> str:
    """Each mode graded three ways, and its format: one sentence, a cited label, citations that hold the answer."""
    lines = ["| mode | contains an accepted string | exact match | token F1 | one sentence | cites a passage label "
             "| citation precision |", "|---|---|---|---|---|---|---|"]
    for mode in [m for m in (*_ROWS, *READER_MODES) if m in result.grading]:
        g = result.grading[mode]
        contains = [a.correct for a in result.answers if a.mode == mode]
        cited = (f"{g['cites_label'] * 100:.1f}% | {g['citation_precision'] * 100:.1f}%" if "cites_label" in g
                 else "n/a | n/a")
        lines.append(f"| {mode} | {share_cell(sum(contains) / len(contains), len(contains))} "
                     f"| {g['exact'] * 100:.1f}% | {g['f1'] * 100:.1f}% | {g['one_sentence'] * 100:.1f}% | {cited} |")
    return "\n".join(lines)


def retrieval_vs_reader(result: ComparisonResult) -> list[str]:
    """Paragraphs that split RAG's misses into retrieval misses and reading misses."""
    paragraphs = []
    if result.context_recall:
        counts = result.counts.get("rag", {})
        recall = ", ".join(f"{_SPLITS.get(split, split)} {share_cell(value, counts.get(split, 0))}"
                           for split, value in result.context_recall.items())
        paragraphs.append(f"RAG context recall (a retrieved passage given to the model holds an accepted answer): "
                          f"{recall}. RAG answers can only be right where this holds.")
    for label, accuracy in result.reader_accuracy.items():
        counts = result.counts.get(label, {})
        reader = ", ".join(f"{_SPLITS.get(split, split)} {share_cell(value, counts.get(split, 0))}"
                           for split, value in accuracy.items())
        mode = READER_MODES.get(label, label)
        paragraphs.append(f"{mode} with perfect retrieval (the generator given only the passage of the source "
                          f"document that holds the answer): {reader}. This is the reader's own ceiling; the "
                          f"difference to the {mode} row is what retrieval loses.")
    return paragraphs


def follows_table(result: ComparisonResult) -> str:
    """Whether each mode answers from the passage or from its training: "" when neither set was run."""
    groups = [(result.follows, _FOLLOWS, "edited facts asked"), (result.abstains, _ABSTAINS, "passage removed: asked")]
    groups = [g for g in groups if g[0]]
    if not groups:
        return ""
    header = [title for _, names, asked in groups for title in (asked, *names.values())]
    lines = ["| mode | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for mode in _ordered(set().union(*(table for table, _, _ in groups))):
        cells = []
        for table, names, _ in groups:
            shares = table.get(mode, {})
            n = int(shares.get("n", 0))
            cells += [str(n) if mode in table else "n/a",
                      *(share_cell(float(shares[key]), n) if key in shares else "n/a" for key in names)]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(result: ComparisonResult, context: dict, plot_names: list[str]) -> str:
    """The whole Markdown report."""
    parts = ["# bakeoff: baked-in (LoRA) vs retrieval (RAG) vs both (hybrid)", ""]
    if context:
        keys = [*(k for k in _METADATA if k in context), *(k for k in context if k not in _METADATA)]
        parts += [f"- {key}: {_value(key, context[key])}" for key in keys]
        parts.append("")
    parts += ["## Summary", "", summary_table(result), ""]
    parts += [line for paragraph in retrieval_vs_reader(result) for line in (paragraph, "")]
    follows = follows_table(result)
    if follows:
        parts += ["## Does the reader follow the passage?", "", follows, "",
                  "Edited facts: a fact's value was changed in its passage and the knowledge base re-indexed, the "
                  "adapter not retrained; an answer that gives the new value follows the passage, one that gives "
                  "the old value answers from what fine-tuning taught. Passage removed: the passages holding the "
                  "fact were taken out of the knowledge base; the right answer is to say it is not in the sources.",
                  ""]
        if result.edit_skips:
            skipped = ", ".join(f"{reason}: {count}" for reason, count in result.edit_skips.items())
            parts += [f"Facts that could not be edited ({sum(result.edit_skips.values())}): {skipped}.", ""]
    if result.grading:
        parts += ["## Grading three ways, and format", "", grading_table(result), "",
                  "Over every graded answer of the mode (all splits). Exact match and token F1 compare the answer "
                  "with the accepted strings after SQuAD's normalisation (case, punctuation, articles, passage "
                  "labels removed); citation precision is the share of the passages an answer cites by label "
                  "that hold an accepted string.", ""]
    parts += ["An answer is correct when it contains one of the question's accepted strings "
              "(case-insensitive). Held-out questions were never used for fine-tuning. "
              "'After update' asks the facts that the v2 documents changed, after re-indexing them; "
              "the adapter was not retrained. 'Unseen docs' asks about documents fine-tuning never saw "
              "(neither their text nor their questions). 'hybrid' is the fine-tuned adapter reading the "
              "retrieved passages. 'Format' is the share of answers that are one sentence and, where passages "
              "were given, cite one by its label. 'Absorb a change' is what a changed document costs each "
              "mode: re-indexing the changed files (rag, hybrid; measured in this run) or retraining the adapter "
              "(baked; measured when it was trained).", ""]
    if "rag-spliced" in result.accuracy:
        parts += ["'<mode>-prefill' and '<mode>-spliced' answer the same retrieved passages in the spliced layout "
                  "(labels are chunk ids, each passage tokenized on its own): '-prefill' evaluates every token, "
                  "'-spliced' splices each passage's precomputed K/V, where a passage does not attend to the "
                  "passages before it; their difference is the splice's accuracy price. 'rag-spliced-cold' empties "
                  "the cache before each timed question, so the states are computed on the fly. The hybrid "
                  "adapter was trained on part of its passages laid out and attending this way.", ""]
    timed = _timed(result)
    parts += ["## Latency per stage (p50, ms)", "", "| stage | " + " | ".join(timed) + " |",
              "|---|" + "---|" * len(timed)]
    for stage in STAGES:
        values = [result.latency[m].stage_p50_ms.get(stage, 0.0) for m in timed]
        parts.append(f"| {_STAGE_LABELS[stage]} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    parts.append("| **retrieval (embed to scoring)** | "
                 + " | ".join(f"**{_retrieval_ms(result, m):.2f}**" for m in timed) + " |")
    parts.append("")
    if result.memory:
        m = result.memory
        parts += ["## Memory (resident MB added)", "", "| part | MB |", "|---|---|",
                  f"| base model | {m.base_model_mb:.0f} |", f"| LoRA adapter | {m.adapter_mb:.0f} |",
                  f"| retrieval (embedder, index, store) | {m.retrieval_mb:.0f} |",
                  f"| rag mode total | {m.rag_mode_mb:.0f} |", f"| baked mode total | {m.baked_mode_mb:.0f} |",
                  f"| hybrid mode total | {m.hybrid_mode_mb:.0f} |", ""]
    if plot_names:
        parts += ["## Plots", ""] + [f"![{name}]({name})" for name in plot_names] + [""]
    wrong = [a for a in result.answers if not a.correct][:20]
    if wrong:
        parts += ["## Some wrong answers", "", "| mode | split | question | answer |", "|---|---|---|---|"]
        parts += [f"| {a.mode} | {a.split} | {_cell(a.question)} | {_cell(a.answer)} |" for a in wrong]
        parts.append("")
    parts.append(f"Run took {result.seconds:.0f} s.")
    return "\n".join(parts) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:160]


def _value(key: str, value: object) -> str:
    if value is None:
        return "none (not a git checkout)" if key == "commit" else "unknown"
    return str(value)


def _ordered(modes: Iterable[str]) -> list[str]:
    """``modes`` in the report's row order, the reader ceilings after the rows, anything else last."""
    order = [*_ROWS, *READER_MODES]
    modes = set(modes)
    return [m for m in order if m in modes] + sorted(modes - set(order))


def _timed(result: ComparisonResult) -> list[str]:
    return _ordered(result.latency)


def _retrieval_ms(result: ComparisonResult, mode: str) -> float:
    return sum(result.latency[mode].stage_p50_ms.get(stage, 0.0) for stage in _RETRIEVAL_STAGES)


# ---- plots


def footer_text(context: dict) -> str:
    """The run facts a plot carries at its foot: model, CPU, threads, commit, date."""
    return (f"model {_value('model', context.get('model'))} · CPU {_value('cpu', context.get('cpu'))} · "
            f"{_value('threads', context.get('threads'))} threads · commit {_value('commit', context.get('commit'))}"
            f" · {_value('date', context.get('date'))}")


def figures(result: ComparisonResult, context: dict) -> dict[str, Figure]:
    """Every plot of the report, by file name, laid out and footed with ``context`` (see ``footer_text``)."""
    drawn = {}
    if result.latency:
        drawn["latency_stages.png"] = _stage_figure(result)
        drawn["latency_ttft_total.png"] = _ttft_figure(result)
    if result.accuracy or result.reader_accuracy:
        drawn["accuracy.png"] = _accuracy_figure(result)
    if result.follows or result.abstains:
        drawn["follows.png"] = _follows_figure(result)
    if result.memory:
        drawn["memory.png"] = _memory_figure(result)
    for fig in drawn.values():
        lines = _wrap(footer_text(context).split(" · "), int(fig.get_figwidth() * _FOOTER_CHARS_PER_INCH))
        height = fig.get_figheight()
        fig.text(0.01, 0.08 / height, "\n".join(lines), fontsize=7, color="0.3", ha="left", va="bottom")
        for _ in range(2):  # a legend hung below an axis moves as the axis shrinks: lay out again
            fig.tight_layout(rect=(0, (0.18 + 0.14 * len(lines)) / height, 1, 1))
    return drawn


def _wrap(parts: list[str], width: int) -> list[str]:
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 3 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] += f" · {part}"
    return lines


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))  # no pyplot: no global figure registry to leak into


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _hbars(ax: Axes, modes: list[str], values: list[float], labels: list[str], *, span: float,
           low: list[float] | None = None, high: list[float] | None = None, offset: float = 0.0,
           height: float = 0.7, colours: list[str] | None = None, hatch: list[str] | None = None) -> None:
    """Horizontal bars, a zero drawn as a thin stub, each labelled past its end (and past its error bar)."""
    y = [i + offset for i in range(len(modes))]
    shown = [max(v, span * _STUB / 100) for v in values]
    bars = ax.barh(y, shown, height, color=colours or [_MODE_COLOURS.get(m, "#969696") for m in modes],
                   edgecolor="0.2", linewidth=0.6)
    for bar, pattern in zip(bars, hatch or []):
        bar.set_hatch(pattern)
    end = list(values)
    if low is not None and high is not None:
        ax.errorbar(values, y, xerr=[[v - lo for v, lo in zip(values, low)], [hi - v for v, hi in zip(values, high)]],
                    fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5)
        end = high
    for yi, x, label in zip(y, end, labels):
        ax.text(max(x, span * _STUB / 100) + span * 0.015, yi, label, va="center", fontsize=7.5)


def _legend_below(fig: Figure, ax: Axes, handles: list, labels: list[str], *, columns: int) -> None:
    """A legend under the axis label, at a fixed distance however tall the axis ends up."""
    from matplotlib.transforms import offset_copy

    ax.legend(handles=handles, labels=labels, fontsize=7.5, ncol=columns, loc="upper center",
              bbox_to_anchor=(0.5, 0), frameon=False,
              bbox_transform=offset_copy(ax.transAxes, fig=fig, y=-30, units="points"))


def _stage_figure(result: ComparisonResult) -> Figure:
    modes = _timed(result)
    fig = _new_figure(12, 1.6 + 0.42 * len(modes))
    first, decode = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": (3, 1)})
    before = [s for s in STAGES if s != "generation.decode_ms"]
    stages = {m: result.latency[m].stage_p50_ms for m in modes}
    totals = [sum(stages[m].get(s, 0.0) for s in before) for m in modes]
    span = max(totals) or 1.0
    left = [0.0] * len(modes)
    for stage in before:
        values = [stages[m].get(stage, 0.0) for m in modes]
        first.barh(range(len(modes)), values, 0.7, left=left, color=_STAGE_COLOURS[stage], label=_STAGE_LABELS[stage],
                   edgecolor="white", linewidth=0.4)
        for i, (x, v) in enumerate(zip(left, values)):
            if v > span * 0.07:  # wide enough to hold its own label
                first.text(x + v / 2, i, _ms(v), ha="center", va="center", fontsize=7,
                           color="white" if stage in ("search.embed_ms", "generation.prefill_ms") else "black")
        left = [a + v for a, v in zip(left, values)]
    for i, mode in enumerate(modes):
        retrieval = _retrieval_ms(result, mode)
        said = f"retrieval {_ms(retrieval)} ms · " if retrieval > 0 else "no retrieval · "
        first.text(totals[i] + span * 0.015, i, f"{said}prefill {_ms(stages[mode].get('generation.prefill_ms', 0))} ms"
                   f" · sum {_ms(totals[i])} ms", va="center", fontsize=7.5)
    first.set_xlim(0, span * 1.5)
    first.set_yticks(range(len(modes)), modes)
    first.invert_yaxis()
    first.set_xlabel("ms (p50 per stage)")
    first.set_title("Before the first token: retrieval (blues) beside generation (oranges)", fontsize=10)
    _legend_below(fig, first, *first.get_legend_handles_labels(), columns=4)
    values = [stages[m].get("generation.decode_ms", 0.0) for m in modes]
    span = max(values) or 1.0
    _hbars(decode, modes, values, [f"{_ms(v)} ms" for v in values], span=span,
           colours=[_STAGE_COLOURS["generation.decode_ms"]] * len(modes))
    decode.set_xlim(0, span * 1.35)
    decode.set_xlabel("ms (p50)")
    decode.set_title("Decode", fontsize=10)
    return fig


def _ttft_figure(result: ComparisonResult) -> Figure:
    modes = _timed(result)
    fig = _new_figure(11, 1.4 + 0.38 * len(modes))
    panels = fig.subplots(1, 2, sharey=True)
    for ax, (title, p50, p95) in zip(panels, (("Time to first token", "ttft_p50_ms", "ttft_p95_ms"),
                                              ("Total answer time", "total_p50_ms", "total_p95_ms"))):
        middle = [getattr(result.latency[m], p50) for m in modes]
        tail = [getattr(result.latency[m], p95) for m in modes]
        span = max(tail) or 1.0
        _hbars(ax, modes, middle, [f"{_ms(a)} ms (p95 {_ms(b)})" for a, b in zip(middle, tail)], span=span,
               low=middle, high=tail)
        ax.set_xlim(0, span * 1.4)
        ax.set_xlabel("ms: bar p50, whisker to p95")
        ax.set_title(title, fontsize=10)
    panels[0].set_yticks(range(len(modes)), modes)
    panels[0].invert_yaxis()
    return fig


def _accuracy_figure(result: ComparisonResult) -> Figure:
    accuracy = {**result.accuracy, **result.reader_accuracy}
    modes = _ordered(accuracy)
    splits = [s for s in _SPLITS if any(s in a for a in accuracy.values())]
    intervals = accuracy_intervals(result)
    fig = _new_figure(3.4 * len(splits) + 1.6, 1.5 + 0.36 * len(modes))
    panels = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    for ax, split in zip(panels, splits):
        rows = [m for m in modes if split in intervals.get(m, {})]
        at = [modes.index(m) for m in rows]
        values = [accuracy[m][split] * 100 for m in rows]
        low = [intervals[m][split][0] * 100 for m in rows]
        high = [intervals[m][split][1] * 100 for m in rows]
        counts = [result.counts[m][split] for m in rows]
        labels = [f"{v:.0f}% ({round(v * n / 100)}/{n})" for v, n in zip(values, counts)]
        for i, mode, v, lo, hi, label in zip(at, rows, values, low, high, labels):
            _hbars(ax, [mode], [v], [label], span=100, low=[lo], high=[hi], offset=i,
                   hatch=["////" if mode in READER_MODES else ""])
        for i in set(range(len(modes))) - set(at):
            ax.text(1, i, "not run", va="center", fontsize=7, color="0.5", style="italic")
        ax.axvline(100, color="0.8", linewidth=0.8)
        ax.set_xlim(0, 128)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("% correct, 95% Wilson interval")
        ax.set_title(_SPLITS[split], fontsize=10)
    panels[0].set_yticks(range(len(modes)), [f"{READER_MODES[m]}, answer passage given" if m in READER_MODES
                                             else m for m in modes])
    panels[0].set_ylim(len(modes) - 0.5, -0.5)
    fig.suptitle("Accuracy per split (hatched: the reader's ceiling, retrieval made perfect)", fontsize=11)
    return fig


def _follows_figure(result: ComparisonResult) -> Figure:
    from matplotlib.patches import Patch

    groups = [(t, names, title) for t, names, title in (
        (result.follows, _FOLLOWS, "Edited value: the answer…"),
        (result.abstains, _ABSTAINS, "Passage removed: the answer…")) if t]
    modes = _ordered(set().union(*(t for t, _, _ in groups)))
    fig = _new_figure(5.5 * len(groups) + 1.5, 1.8 + 0.55 * len(modes) * max(len(n) for _, n, _ in groups) / 2)
    panels = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (table, names, title) in zip(panels, groups):
        height = 0.8 / len(names)
        for k, (key, name) in enumerate(names.items()):
            rows = [m for m in modes if table.get(m, {}).get("n") and key in table[m]]
            for mode in rows:
                n = int(table[mode]["n"])
                share = float(table[mode][key])
                low, high = _interval(share, n)
                _hbars(ax, [mode], [share * 100], [f"{share * 100:.0f}% ({round(share * n)}/{n})"], span=100,
                       low=[low * 100], high=[high * 100], offset=modes.index(mode) - 0.4 + height * (k + 0.5),
                       height=height * 0.9, colours=[_SHARE_COLOURS[key]])
        for i in (i for i, m in enumerate(modes) if not table.get(m, {}).get("n")):
            ax.text(1, i, "not run", va="center", fontsize=7, color="0.5", style="italic")
        ax.axvline(100, color="0.8", linewidth=0.8)
        ax.set_xlim(0, 128)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_xlabel("% of answers, 95% Wilson interval")
        ax.set_title(title, fontsize=10)
        _legend_below(fig, ax, [Patch(color=_SHARE_COLOURS[key]) for key in names], list(names.values()), columns=3)
    panels[0].set_yticks(range(len(modes)), modes)
    panels[0].set_ylim(len(modes) - 0.5, -0.5)
    fig.suptitle("Does the reader follow the passage?", fontsize=11)
    return fig


def _memory_figure(result: ComparisonResult) -> Figure:
    m = result.memory
    assert m is not None  # drawn only with a footprint
    fig = _new_figure(8.5, 4.5)
    ax = fig.subplots()
    modes = ["rag", "baked", "hybrid"]
    parts = [("base model", [m.base_model_mb] * 3, "#969696"), ("adapter", [0.0, m.adapter_mb, m.adapter_mb], "#fd8d3c"),
             ("retrieval", [m.retrieval_mb, 0.0, m.retrieval_mb], "#3182bd")]
    bottom = [0.0] * 3
    for label, values, colour in parts:
        ax.bar(modes, values, bottom=bottom, label=label, color=colour, edgecolor="white", linewidth=0.4)
        for i, v in enumerate(values):
            if v > 0.06 * m.hybrid_mode_mb:
                ax.text(i, bottom[i] + v / 2, f"{v:.0f}", ha="center", va="center", fontsize=7.5)
            elif v > 0:  # too thin to hold its label: said beside it
                ax.text(i + 0.41, bottom[i] + v / 2, f"{label} {v:.0f}", ha="left", va="center", fontsize=7.5)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.0f} MB", ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax.set_ylim(0, max(bottom) * 1.3 or 1.0)
    ax.set_xlim(-0.6, 2.95)  # room for the labels beside thin parts
    ax.set_ylabel("resident MB added")
    ax.set_title("Memory per mode", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3, frameon=False)
    return fig
