"""Writing a comparison down: JSON for machines, Markdown for people, PNG plots.

Every figure in the Markdown report is computed from the same ``ComparisonResult``
that is saved as JSON beside it. Every accuracy and share carries its 95 % Wilson
interval (``stats.wilson_interval``), and every plot a footer naming the model, CPU,
threads, commit and date that made it (``metadata.run_metadata``). The plots are drawn
in ``engine.bakeoff.plots``, from the names, row order and intervals defined here.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from engine._files import write_text_atomic
from engine.bakeoff.compare import READER_MODES, SPLITS, ComparisonResult
from engine.bakeoff.labels import (
    ABSTAINS,
    FOLLOWS,
    ROWS,
    SPLIT_LABELS,
    STAGE_LABELS,
    accuracy_intervals,
    metadata_value,
    ordered,
    retrieval_ms,
    share_cell,
    share_intervals,
    timed_modes,
)
from engine.bakeoff.latency import PREFILL_SPLIT, STAGES
from engine.bakeoff.metadata import run_metadata
from engine.bakeoff.stats import half_width

#: How long each mode takes to absorb a changed document: the setup cost it pays.
_SETUP = {"rag": "reindex", "baked": "retrain", "hybrid": "reindex"}

#: The run facts printed first in the Markdown and in every plot's footer.
_METADATA = ("model", "cpu", "threads", "commit", "date", "platform")


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
    # imported here: plots.py takes this module's names and row order, so importing it at the top would be circular
    from engine.bakeoff.plots import save_figures

    plots = save_figures(result, context, directory)
    markdown = render_markdown(result, context, [p.name for p in plots])
    markdown_path = write_text_atomic(directory / "report.md", markdown)
    return ReportFiles(directory, json_path, markdown_path, tuple(plots))


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


def summary_table(result: ComparisonResult) -> str:
    """The headline table: per mode, accuracy on every split, the grading and format, latency,
    memory and setup cost (Markdown)."""
    lines = ["| mode | train | held-out | after update | unseen docs | exact | token F1 | format "
             "| citation precision | TTFT p50 / p95 (ms) | total p50 / p95 (ms) | prompt tokens p50 | memory (MB) "
             "| absorb a change (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in [m for m in ROWS if m in result.accuracy or m in result.latency]:
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
    for mode in [m for m in (*ROWS, *READER_MODES) if m in result.grading]:
        g = result.grading[mode]
        # over the graded splits only, as compare's grading is: the probes' answers are graded by their own rules
        contains = [a.correct for a in result.answers if a.mode == mode and a.split in SPLITS]
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
        recall = ", ".join(f"{SPLIT_LABELS.get(split, split)} {share_cell(value, counts.get(split, 0))}"
                           for split, value in result.context_recall.items())
        paragraphs.append(f"RAG context recall (a retrieved passage given to the model holds an accepted answer): "
                          f"{recall}. RAG answers can only be right where this holds.")
    for label, accuracy in result.reader_accuracy.items():
        counts = result.counts.get(label, {})
        reader = ", ".join(f"{SPLIT_LABELS.get(split, split)} {share_cell(value, counts.get(split, 0))}"
                           for split, value in accuracy.items())
        mode = READER_MODES.get(label, label)
        paragraphs.append(f"{mode} with perfect retrieval (the generator given only the passage of the source "
                          f"document that holds the answer): {reader}. This is the reader's own ceiling; the "
                          f"difference to the {mode} row is what retrieval loses.")
    return paragraphs


def follows_table(result: ComparisonResult) -> str:
    """Whether each mode answers from the passage or from its training: "" when neither set was run."""
    groups = [(result.follows, FOLLOWS, "edited facts asked"), (result.abstains, ABSTAINS, "passage removed: asked")]
    groups = [g for g in groups if g[0]]
    if not groups:
        return ""
    header = [title for _, names, asked in groups for title in (asked, *names.values())]
    lines = ["| mode | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for mode in ordered(set().union(*(table for table, _, _ in groups))):
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
        parts += [f"- {key}: {metadata_value(key, context[key])}" for key in keys]
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
    timed = timed_modes(result)
    parts += ["## Latency per stage (p50, ms)", "", "| stage | " + " | ".join(timed) + " |",
              "|---|" + "---|" * len(timed)]
    for stage in STAGES:
        values = [result.latency[m].stage_p50_ms.get(stage, 0.0) for m in timed]
        parts.append(f"| {STAGE_LABELS[stage]} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        if stage == "generation.prefill_ms":
            parts += _prefill_split_rows(result, timed)
    parts.append("| **retrieval (embed to scoring)** | "
                 + " | ".join(f"**{retrieval_ms(result, m):.2f}**" for m in timed) + " |")
    parts.append("")
    if any(result.latency[m].prefill_split_p50_ms for m in timed if m != "baked"):
        parts += [_PREFILL_SPLIT_NOTE, ""]
    if result.memory:
        m = result.memory
        parts += ["## Memory (resident MB added)", "", "| part | MB |", "|---|---|",
                  f"| base model | {m.base_model_mb:.0f} |", f"| LoRA adapter | {m.adapter_mb:.0f} |",
                  f"| retrieval (embedder, index, store) | {m.retrieval_mb:.0f} |",
                  f"| rag mode total | {m.rag_mode_mb:.0f} |", f"| baked mode total | {m.baked_mode_mb:.0f} |",
                  f"| hybrid mode total | {m.hybrid_mode_mb:.0f} |", ""]
    if plot_names:
        parts += ["## Plots", ""] + [f"![{name}]({name})" for name in plot_names] + [""]
    # a probe's answer (split "edited" or "removed") is not wrong by the accepted strings: its own section grades it
    wrong = [a for a in result.answers if not a.correct and a.split in SPLITS][:20]
    if wrong:
        parts += ["## Some wrong answers", "", "| mode | split | question | answer |", "|---|---|---|---|"]
        parts += [f"| {a.mode} | {a.split} | {_cell(a.question)} | {_cell(a.answer)} |" for a in wrong]
        parts.append("")
    parts.append(f"Run took {result.seconds:.0f} s.")
    return "\n".join(parts) + "\n"


_PREFILL_SPLIT_NOTE = (
    "The spliced modes' prefill is split in two: right after each timed spliced answer the same question is "
    "prefilled after the same cached prefix with no passage (same adapter and settings); its p50 is the "
    "question's own tokens, and the rest of the prefill's p50 is the question's attention over the spliced "
    "positions. The baked prefill is its question's own tokens alone.")


def _prefill_split_rows(result: ComparisonResult, timed: list[str]) -> list[str]:
    """The prefill's two parts (``PREFILL_SPLIT``) as table rows; "n/a" for a mode without them."""
    rows = []
    for stage in PREFILL_SPLIT:
        cells = [f"{split[stage]:.2f}" if stage in (split := result.latency[m].prefill_split_p50_ms) else "n/a"
                 for m in timed]
        rows.append(f"| &nbsp;&nbsp;{STAGE_LABELS[stage]} | " + " | ".join(cells) + " |")
    return rows


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:160]
