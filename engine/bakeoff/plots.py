"""The bake-off's plots: one PNG per view of a ``ComparisonResult``, each footed with the run facts.

Drawn on bare ``matplotlib.figure.Figure`` objects (no pyplot, so no global figure
registry); matplotlib is imported inside the drawing functions, so importing this module
does not load it. The names, row order and intervals are the report's
(``engine.bakeoff.report``), so a plot and the Markdown beside it always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.bakeoff.compare import READER_MODES, ComparisonResult
from engine.bakeoff.labels import (
    ABSTAINS,
    FOLLOWS,
    SPLIT_LABELS,
    STAGE_LABELS,
    accuracy_intervals,
    interval,
    metadata_value,
    ordered,
    retrieval_ms,
    timed_modes,
)
from engine.bakeoff.latency import PREFILL_SPLIT, STAGES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Retrieval in blues, generation in oranges, the prompt in grey: what retrieval costs beside prefill shows by colour.
_STAGE_COLOURS = {
    "search.embed_ms": "#08519c", "search.dense_search_ms": "#3182bd", "search.lexical_search_ms": "#6baed6",
    "search.scoring_ms": "#9ecae1", "prompt_build_ms": "#bdbdbd", "kv_ms": "#fdd0a2",
    "generation.splice_ms": "#fdae6b", "generation.prefill_ms": "#e6550d", "generation.decode_ms": "#a63603",
    "prefill.question_ms": "#f16913", "prefill.spliced_positions_ms": "#7f2704",
}
#: rag's family in blues, baked orange, hybrid's family in greens; the reader ceilings hatched.
_MODE_COLOURS = {
    "rag": "#3182bd", "rag-prefill": "#9ecae1", "rag-spliced": "#08519c", "rag-spliced-cold": "#6baed6",
    "rag-answer-passage": "#c6dbef", "baked": "#fd8d3c", "hybrid": "#31a354", "hybrid-prefill": "#a1d99b",
    "hybrid-spliced": "#006d2c", "hybrid-answer-passage": "#c7e9c0",
}
_SHARE_COLOURS = {"passage": "#31a354", "old": "#de2d26", "abstained": "#31a354", "memory": "#de2d26",
                  "wrong": "#969696"}
_STUB = 1.0  # % of the axis: a zero bar is drawn this wide so that it is seen
_FOOTER_CHARS_PER_INCH = 17  # at the footer's 7 points; a longer footer is wrapped at its separators
_DPI = 110


def save_figures(result: ComparisonResult, context: dict, directory: Path) -> list[Path]:
    """Draw every plot of ``result`` (see ``figures``) and save each as a PNG in ``directory``; their paths."""
    saved = []
    for name, fig in figures(result, context).items():
        fig.savefig(directory / name, dpi=_DPI)
        saved.append(directory / name)
    return saved


def footer_text(context: dict) -> str:
    """The run facts a plot carries at its foot: model, CPU, threads, commit, date."""
    fact = {key: metadata_value(key, context.get(key)) for key in ("model", "cpu", "threads", "commit", "date")}
    return (f"model {fact['model']} · CPU {fact['cpu']} · {fact['threads']} threads · commit {fact['commit']}"
            f" · {fact['date']}")


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
    modes = timed_modes(result)
    fig = _new_figure(12, 1.6 + 0.42 * len(modes))
    first, decode = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": (3, 1)})
    # a mode whose prefill is split (latency.PREFILL_SPLIT) draws its two parts in the prefill's place
    before = [s for s in STAGES if s != "generation.decode_ms"]
    segments = [part for s in before for part in ((s, *PREFILL_SPLIT) if s == "generation.prefill_ms" else (s,))]
    stages = {m: result.latency[m].stage_p50_ms for m in modes}
    drawn = {m: _segments(stages[m], result.latency[m].prefill_split_p50_ms) for m in modes}
    totals = [sum(stages[m].get(s, 0.0) for s in before) for m in modes]
    span = max(totals) or 1.0
    left = [0.0] * len(modes)
    for stage in segments:
        values = [drawn[m].get(stage, 0.0) for m in modes]
        if stage in PREFILL_SPLIT and not any(values):
            continue  # no mode has the split: no empty legend entry
        first.barh(range(len(modes)), values, 0.7, left=left, color=_STAGE_COLOURS[stage], label=STAGE_LABELS[stage],
                   edgecolor="white", linewidth=0.4)
        for i, (x, v) in enumerate(zip(left, values)):
            if v > span * 0.07:  # wide enough to hold its own label
                first.text(x + v / 2, i, _ms(v), ha="center", va="center", fontsize=7,
                           color="white" if stage in ("search.embed_ms", "generation.prefill_ms", *PREFILL_SPLIT)
                           else "black")
        left = [a + v for a, v in zip(left, values)]
    for i, mode in enumerate(modes):
        retrieval = retrieval_ms(result, mode)
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


def _segments(stages: dict[str, float], split: dict[str, float]) -> dict[str, float]:
    """A mode's stage p50s as drawn: with a split prefill, its two parts stand in for the prefill segment
    (a part below 0, the counterfactual's noise, drawn as 0)."""
    if not split:
        return stages
    return {**stages, **{part: max(split.get(part, 0.0), 0.0) for part in PREFILL_SPLIT}, "generation.prefill_ms": 0.0}


def _ttft_figure(result: ComparisonResult) -> Figure:
    modes = timed_modes(result)
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
    modes = ordered(accuracy)
    splits = [s for s in SPLIT_LABELS if any(s in a for a in accuracy.values())]
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
        ax.set_title(SPLIT_LABELS[split], fontsize=10)
    panels[0].set_yticks(range(len(modes)), [f"{READER_MODES[m]}, answer passage given" if m in READER_MODES
                                             else m for m in modes])
    panels[0].set_ylim(len(modes) - 0.5, -0.5)
    fig.suptitle("Accuracy per split (hatched: the reader's ceiling, retrieval made perfect)", fontsize=11)
    return fig


def _follows_figure(result: ComparisonResult) -> Figure:
    from matplotlib.patches import Patch

    groups = [(t, names, title) for t, names, title in (
        (result.follows, FOLLOWS, "Edited value: the answer…"),
        (result.abstains, ABSTAINS, "Passage removed: the answer…")) if t]
    modes = ordered(set().union(*(t for t, _, _ in groups)))
    fig = _new_figure(5.5 * len(groups) + 1.5, 1.8 + 0.55 * len(modes) * max(len(n) for _, n, _ in groups) / 2)
    panels = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (table, names, title) in zip(panels, groups):
        height = 0.8 / len(names)
        for k, (key, name) in enumerate(names.items()):
            rows = [m for m in modes if table.get(m, {}).get("n") and key in table[m]]
            for mode in rows:
                n = int(table[mode]["n"])
                share = float(table[mode][key])
                low, high = interval(share, n)
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
