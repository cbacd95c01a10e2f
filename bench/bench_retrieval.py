"""Retrieval end to end (embed query + HNSW + FTS5 + scoring) on a 10k-chunk knowledge base.

The knowledge base is built once from real text (docstrings of the Python standard
library, one file per module, cut into 32-token chunks (about 11k of them)) with the fp32 embedder and
kept in bench/results/kb-10k/; later runs reuse it. Queries are a sentence taken
from a random chunk; recall@5 counts the query's own chunk among the hits. The int8
embedder queries the same (fp32-built) knowledge base.

Run: .venv/bin/python -m pytest bench/bench_retrieval.py -o python_files='bench_*.py'
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine.kb.knowledge_base import KnowledgeBase
from engine.kb.manifest import read as read_manifest

RESULTS = Path(__file__).parent / "results"
KB_DIR = RESULTS / "kb-10k"
TEXT_DIR = RESULTS / "kb-10k-text"
TARGET_CHUNKS = 10_000
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtledemo", "lib2to3", "test", "ensurepip", "venv"}


def _write_stdlib_text(folder: Path, max_chars: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write_docs(folder, max_chars)


def _docs_of(prefix: str, obj, parts: list[str]) -> None:
    doc = inspect.getdoc(obj)
    if doc and len(doc) > 80:
        parts.append(f"## {prefix}\n\n{doc}\n")


def _write_docs(folder: Path, max_chars: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if info.name in SKIP or info.name.startswith("_") or info.name not in sys.stdlib_module_names:
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional platform modules
            continue
        parts = [f"# {info.name}\n\n{inspect.getdoc(module) or ''}\n"]
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                continue
            _docs_of(f"{info.name}.{name}", obj, parts)
            if inspect.isclass(obj):
                for attr, member in sorted(vars(obj).items()):
                    if not attr.startswith("_") and callable(member):
                        _docs_of(f"{info.name}.{name}.{attr}", member, parts)
        text = "\n".join(parts)
        if len(text) > 400:
            (folder / f"{info.name}.md").write_text(text, encoding="utf-8")
            total += len(text)
        if total >= max_chars:
            break


@pytest.fixture(scope="module")
def embedders(embedder_dir):
    from engine.embedder import Embedder

    return {v: Embedder(variant=v, cache_dir=embedder_dir.parent) for v in ("fp32", "int8")}


@pytest.fixture(scope="module")
def kb_dir(embedders) -> Path:
    if (KB_DIR / "manifest.json").exists() and read_manifest(KB_DIR).chunks >= TARGET_CHUNKS:
        return KB_DIR
    import shutil

    shutil.rmtree(TEXT_DIR, ignore_errors=True)
    shutil.rmtree(KB_DIR, ignore_errors=True)
    _write_stdlib_text(TEXT_DIR, max_chars=3_200_000)
    kb = KnowledgeBase.build([TEXT_DIR], KB_DIR, embedder=embedders["fp32"], chunk_tokens=32, overlap_tokens=4)
    assert kb.stats().chunks >= TARGET_CHUNKS, f"only {kb.stats().chunks} chunks: raise max_chars"
    return KB_DIR


@pytest.fixture(scope="module")
def queries(kb_dir, embedders):
    kb = KnowledgeBase.open(kb_dir, embedder=embedders["fp32"])
    rng = np.random.default_rng(0)
    out = []
    with kb._live.reading() as generation:  # a sample of the stored chunks, for the queries
        chunks = generation.store.get(rng.choice(generation.ids, 400, replace=False))
    for chunk in chunks:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", chunk.text) if 30 <= len(s) <= 200]
        if sentences:
            out.append((sentences[0], chunk.chunk_id))
    return out[:200]


@pytest.mark.parametrize("variant, target", [("fp32", "<= 12"), ("int8", "<= 6")])
def test_retrieval_p50(benchmark, kb_dir, embedders, queries, claims, variant, target):
    kb = KnowledgeBase.open(kb_dir, embedder=embedders[variant])
    hits = [kb.search(q, k=5).hits for q, _ in queries]
    recall = np.mean([any(h.chunk_id == cid for h in found) for found, (_, cid) in zip(hits, queries)])
    state = {"i": 0}

    def one():
        state["i"] = (state["i"] + 1) % len(queries)
        return kb.search(queries[state["i"]][0], k=5)

    benchmark.group = "retrieval 10k chunks"
    result = benchmark.pedantic(one, rounds=200, warmup_rounds=10)
    stages = result.timings
    claims.add("retrieval", f"retrieval p50 @ 10k chunks, {variant} embedder", benchmark.stats.stats.median * 1e3,
               "ms", target=target)
    claims.add("retrieval", f"recall@5 (own chunk), {variant}", float(recall) * 100, "%")
    benchmark.extra_info.update(recall_at_5=float(recall), last_timings=stages.__dict__)
    test_retrieval_p50.recall = getattr(test_retrieval_p50, "recall", {}) | {variant: float(recall)}
    if variant == "int8" and "fp32" in test_retrieval_p50.recall:
        loss = (test_retrieval_p50.recall["fp32"] - recall) * 100
        claims.add("retrieval", "recall@5 loss int8 vs fp32", loss, "points", target="<= 1")


def test_bundled_qa_recall_fp32_vs_int8(embedders, claims, tmp_path_factory):
    """Retrieval recall on real questions: the bundled set's 748 questions against its 29 documents.

    Each variant indexes the documents with its own embeddings; a question counts as
    recalled when one of the top-4 hits holds one of its accepted answers. This is the
    int8 embedder's effect on retrieval that a user of the bundled set would see.
    """
    from engine.bakeoff.qa import BUNDLED_SET, is_correct, load_questions

    questions = load_questions(BUNDLED_SET / "qa.jsonl")
    recall = {}
    for variant in ("fp32", "int8"):
        kb = KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp(variant) / "kb",
                                 embedder=embedders[variant])
        found = [any(is_correct(h.text, q.answers) for h in kb.search(q.question, k=4).hits) for q in questions]
        recall[variant] = 100 * float(np.mean(found))
        claims.add("retrieval", f"bundled QA recall@4 ({len(questions)} questions), {variant}", recall[variant], "%")
    claims.add("retrieval", "bundled QA recall@4 loss int8 vs fp32", recall["fp32"] - recall["int8"], "points",
               target="<= 1")
