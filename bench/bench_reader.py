"""Reader designs on one sample big enough to tell them apart: which fine-tune makes the hybrid reader read?

Two adapters on the quick profile's 16 facts, the same data, seed and epochs, differing
only in the reader examples:

- ``raft``: the previous recipe: gold passage among retrieved distractors, or distractors
  only; every example about a fact the adapter also bakes;
- ``kaft``: the same plus counterfactual examples (40 % of the gold ones: the value
  replaced in the passages) and reading practice (0.5 per trained fact, from facts the
  adapter is not trained on, values replaced): the recipe's defaults now.

Each adapter answers in hybrid mode every question about the unseen documents (130), every
wording of the 16 facts with their value edited in a copy of the documents (seeded apart
from training, ``engine.bakeoff.probes.PROBE_SEED``), and the held-out questions; in baked
mode every train question (the baked mode must not collapse). Accuracies with 95 % Wilson
intervals, and the difference of the two designs with its own interval (Newcombe's
method 10), so a difference that the sample cannot carry says so.

Run: .venv/bin/python -m pytest bench/bench_reader.py -o python_files='bench_*.py' -s
(about 20 minutes on 2 idle cores: two fine-tunes and ~450 answers).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")

from engine.bakeoff.pipeline import QUICK  # noqa: E402
from engine.bakeoff.probes import PROBE_SEED, knowledge_base_copy  # noqa: E402
from engine.bakeoff.stats import wilson_interval  # noqa: E402
from engine.embedding.embedder import Embedder  # noqa: E402
from engine.facade import Engine  # noqa: E402
from engine.finetune import finetune  # noqa: E402
from engine.kb import KnowledgeBase  # noqa: E402
from engine.questions.edits import Corpus, plan_edits  # noqa: E402
from engine.questions.qa import BUNDLED_SET, is_correct, load_questions, select_facts  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# No training clock: a clock that stops a busy machine's training early makes the designs incomparable.
_BASE = dataclasses.replace(QUICK.finetune, max_train_seconds=None)
DESIGNS = {
    "raft": dataclasses.replace(_BASE, counterfactual_share=0.0, practice_per_fact=0.0),
    "kaft": _BASE,
}


def _interval(hits: int, n: int) -> str:
    low, high = wilson_interval(hits, n)
    return f"{100 * hits / n:.1f}% ({hits}/{n}, 95% CI {100 * low:.1f}–{100 * high:.1f})"


def _difference(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float]:
    """b − a with Newcombe's hybrid score interval (method 10), as shares."""
    (ha, na), (hb, nb) = a, b
    pa, pb = ha / na, hb / nb
    la, ua = wilson_interval(ha, na)
    lb, ub = wilson_interval(hb, nb)
    low = (pb - pa) - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = (pb - pa) + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return pb - pa, low, high


def test_reader_designs(generator_model_path, embedder_dir, tmp_path_factory, claims):
    questions = load_questions(BUNDLED_SET / "qa.jsonl")
    docs = BUNDLED_SET / "docs"
    work = tmp_path_factory.mktemp("reader")
    chosen = select_facts(questions, QUICK.finetune.limit_facts, spread=True)
    facts = {q.fact_id: q for q in chosen}
    edits, skipped = plan_edits([(q.fact_id, q.source, q.answers) for q in facts.values()], Corpus(docs),
                                seed=PROBE_SEED)
    new_value = {e.fact_id: e.new for e in edits}
    sets = {
        "unseen": [q for q in questions if q.split == "unseen"],
        "edited": [q for q in chosen if q.fact_id in new_value],
        "heldout": [q for q in chosen if q.split == "heldout"],
        "baked train": [q for q in chosen if q.split == "train"],
    }
    scores: dict[str, dict[str, tuple[int, int]]] = {}
    with KnowledgeBase.build(docs, work / "kb", embedder=Embedder(embedder_dir)) as kb, \
            knowledge_base_copy(kb, docs, work / "edited", edit=edits) as edited_kb:
        for name, config in DESIGNS.items():
            adapter = work / f"{name}.gguf"
            report = finetune(docs, BUNDLED_SET / "qa.jsonl", generator_model_path, adapter, config=config, kb=kb)
            print(f"\n{name}: {report.n_reader_examples} reader examples ({report.n_reader_counterfactual} "
                  f"counterfactual, {report.n_reader_practice} practice), {report.steps} steps, "
                  f"{report.train_seconds:.0f} s, stopped early: {report.stopped_early}")
            scores[name] = {}
            with Engine(generator_model_path, adapter=adapter, kb=kb, n_threads=2) as engine:
                for split, asked in sets.items():
                    right = 0
                    for q in asked:
                        if split == "baked train":
                            text = engine.ask(q.question, "baked").text
                        else:
                            source = edited_kb if split == "edited" else kb
                            hits = engine.retrieve(q.question, kb=source).hits
                            text = engine.ask(q.question, "hybrid", passages=hits, splice="off").text
                        right += is_correct(text, new_value[q.fact_id] if split == "edited" else q.answers)
                    scores[name][split] = (right, len(asked))
    lines = ["| design | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    lines += [f"| {name} | " + " | ".join(_interval(*scores[name][s]) for s in sets) + " |" for name in DESIGNS]
    lines.append("| kaft − raft | " + " | ".join(
        "{:+.1f} points (95% CI {:+.1f} to {:+.1f})".format(*(100 * v for v in _difference(
            scores["raft"][s], scores["kaft"][s]))) for s in sets) + " |")
    print("\n" + "\n".join(lines) + f"\n(edited set: {len(edits)} facts edited, skipped {skipped})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reader_designs.json").write_text(json.dumps(
        {"scores": scores, "skipped": skipped, "table": lines}, indent=2))
    for name in DESIGNS:
        for split, (right, n) in scores[name].items():
            claims.add("reader design", f"{name} {split}", 100 * right / n, "%")
