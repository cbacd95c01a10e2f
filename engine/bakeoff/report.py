"""Writing a comparison down: JSON for machines, Markdown for people, PNG plots.

Every figure in the Markdown report is computed from the same ``ComparisonResult``
that is saved as JSON beside it.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from engine._files import write_text_atomic
from engine.bakeoff.compare import READER_MODES, STAGES, ComparisonResult

_STAGE_LABELS = {
    "search.embed_ms": "embed", "search.dense_search_ms": "dense search",
    "search.lexical_search_ms": "lexical search", "search.scoring_ms": "scoring",
    "prompt_build_ms": "prompt build", "kv_ms": "chunk states (lookup/compute)",
    "generation.splice_ms": "KV restore + shift", "generation.prefill_ms": "prefill", "generation.decode_ms": "decode",
}
#: Rows of the summary, in order; a row is shown when the result has it.
_ROWS = ("rag", "baked", "hybrid", "rag-prefill", "rag-spliced", "rag-spliced-cold", "hybrid-prefill",
         "hybrid-spliced")
#: How long each mode takes to absorb a changed document: the setup cost it pays.
_SETUP = {"rag": "reindex", "baked": "retrain", "hybrid": "reindex"}


@dataclass(frozen=True)
class ReportFiles:
    """Where a written report lives."""

    directory: Path
    json_path: Path
    markdown_path: Path
    plots: tuple[Path, ...]


def write_report(result: ComparisonResult, out_dir: str | os.PathLike[str], *,
                 context: dict | None = None) -> ReportFiles:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir``."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"context": {**(context or {}), "platform": platform.platform(), "python": platform.python_version()},
               **result.to_dict()}
    json_path = write_text_atomic(directory / "report.json", json.dumps(payload, indent=2, default=str))
    plots = _plots(result, directory)
    markdown = render_markdown(result, context or {}, [p.name for p in plots])
    markdown_path = write_text_atomic(directory / "report.md", markdown)
    return ReportFiles(directory, json_path, markdown_path, tuple(plots))


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
            if split not in acc or not counts.get(split):
                return "n/a"
            return f"{acc[split] * 100:.1f}% ({round(acc[split] * counts[split])}/{counts[split]})"

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
        lines.append(f"| {mode} | {sum(contains) / len(contains) * 100:.1f}% | {g['exact'] * 100:.1f}% "
                     f"| {g['f1'] * 100:.1f}% | {g['one_sentence'] * 100:.1f}% | {cited} |")
    return "\n".join(lines)


def retrieval_vs_reader(result: ComparisonResult) -> list[str]:
    """Paragraphs that split RAG's misses into retrieval misses and reading misses."""
    paragraphs = []
    if result.context_recall:
        recall = ", ".join(f"{split} {value * 100:.1f}%" for split, value in result.context_recall.items())
        paragraphs.append(f"RAG context recall (a retrieved passage given to the model holds an accepted answer): "
                          f"{recall}. RAG answers can only be right where this holds.")
    for label, accuracy in result.reader_accuracy.items():
        counts = result.counts.get(label, {})
        reader = ", ".join(f"{split} {value * 100:.1f}% ({round(value * counts.get(split, 0))}/{counts.get(split, 0)})"
                           for split, value in accuracy.items())
        mode = READER_MODES.get(label, label)
        paragraphs.append(f"{mode} with perfect retrieval (the generator given only the passage of the source "
                          f"document that holds the answer): {reader}. This is the reader's own ceiling; the "
                          f"difference to the {mode} row is what retrieval loses.")
    return paragraphs


def render_markdown(result: ComparisonResult, context: dict, plot_names: list[str]) -> str:
    """The whole Markdown report."""
    parts = ["# bakeoff: baked-in (LoRA) vs retrieval (RAG) vs both (hybrid)", ""]
    if context:
        parts += [f"- {key}: {value}" for key, value in context.items()]
        parts.append("")
    parts += ["## Summary", "", summary_table(result), ""]
    parts += [line for paragraph in retrieval_vs_reader(result) for line in (paragraph, "")]
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
    timed = [m for m in _ROWS if m in result.latency]
    parts += ["## Latency per stage (p50, ms)", "", "| stage | " + " | ".join(timed) + " |",
              "|---|" + "---|" * len(timed)]
    for stage in STAGES:
        values = [result.latency[m].stage_p50_ms.get(stage, 0.0) for m in timed]
        parts.append(f"| {_STAGE_LABELS[stage]} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
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


def _plots(result: ComparisonResult, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    modes = [m for m in ("rag", "baked", "hybrid") if m in result.latency]
    if modes:
        fig, ax = plt.subplots(figsize=(7, 4))
        bottoms = [0.0] * len(modes)
        for stage in STAGES:
            values = [result.latency[m].stage_p50_ms[stage] for m in modes]
            ax.bar(modes, values, bottom=bottoms, label=_STAGE_LABELS[stage])
            bottoms = [b + v for b, v in zip(bottoms, values)]
        ax.set_ylabel("ms (p50)")
        ax.set_title("Latency per stage")
        ax.legend(fontsize=8)
        written.append(_save(fig, directory / "latency_stages.png"))

        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["TTFT p50", "TTFT p95", "total p50", "total p95"]
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            lat = result.latency[mode]
            values = [lat.ttft_p50_ms, lat.ttft_p95_ms, lat.total_p50_ms, lat.total_p95_ms]
            ax.bar([x + i * width for x in range(len(labels))], values, width, label=mode)
        ax.set_xticks([x + width * (len(modes) - 1) / 2 for x in range(len(labels))], labels)
        ax.set_ylabel("ms")
        ax.set_title("Time to first token and total")
        ax.legend()
        written.append(_save(fig, directory / "latency_ttft_total.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    splits = ["train", "heldout", "updated", "unseen"]
    series: list[tuple[str, dict[str, float]]] = [(mode, result.accuracy[mode]) for mode in ("rag", "baked", "hybrid")
                                                  if mode in result.accuracy]
    series += [(f"{READER_MODES[label]}, answer passage given", accuracy)
               for label, accuracy in result.reader_accuracy.items()]
    width = 0.8 / len(series)
    for i, (label, accuracy) in enumerate(series):
        values = [accuracy.get(s, float("nan")) * 100 for s in splits]  # no bar where not measured
        ax.bar([x + i * width for x in range(len(splits))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(splits))],
                  ["train", "held-out", "after update", "unseen docs"])
    ax.set_ylabel("% correct")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy")
    ax.legend()
    written.append(_save(fig, directory / "accuracy.png"))

    if result.memory:
        m = result.memory
        fig, ax = plt.subplots(figsize=(6, 4))
        modes = ["rag", "baked", "hybrid"]
        ax.bar(modes, [m.base_model_mb] * 3, label="base model")
        ax.bar(modes, [0.0, m.adapter_mb, m.adapter_mb], bottom=[m.base_model_mb] * 3, label="adapter")
        ax.bar(modes, [m.retrieval_mb, 0.0, m.retrieval_mb], bottom=[m.base_model_mb, m.base_model_mb + m.adapter_mb,
                                                                      m.base_model_mb + m.adapter_mb],
               label="retrieval")
        ax.set_ylabel("resident MB")
        ax.set_title("Memory per mode")
        ax.legend()
        written.append(_save(fig, directory / "memory.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
