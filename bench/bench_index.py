"""Dense index: HNSW search latency and recall@10 at 1k/10k/100k chunks, and build throughput.

Synthetic normalised 384-d vectors give the scale (the 100k graph is built once and
cached under bench/results/); build throughput runs the bundled documents through
the real embedder.

Run: .venv/bin/python -m pytest bench/bench_index.py -o python_files='bench_*.py'
"""

from __future__ import annotations

import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from engine.kb import index
from engine.kb.index import HnswConfig

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "engine" / "data" / "kb" / "docs"
DIM = 384
CONFIG = HnswConfig()


def _clustered(n: int, seed: int) -> np.ndarray:
    """Vectors around 200 topic centres, like embeddings of a corpus (uniform noise is unrealistically hard)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    v = centres[rng.integers(0, 200, n)] + 0.9 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=[1_000, 10_000, 100_000], ids=lambda n: f"{n // 1000}k")
def graph(request):
    n = request.param
    vectors = _clustered(n, seed=n)
    ids = np.arange(n, dtype=np.int64)
    cache = RESULTS / f"hnsw-{n}-M{CONFIG.M}-efc{CONFIG.ef_construction}.bin"
    if cache.exists():
        g = hnswlib.Index(space="ip", dim=DIM)
        g.load_index(str(cache))
    else:
        start = time.perf_counter()
        g = index.build_graph(vectors, ids, CONFIG)
        request.node.build_s = time.perf_counter() - start
        RESULTS.mkdir(exist_ok=True)
        g.save_index(str(cache))
    g.set_num_threads(1)
    queries = _clustered(200, seed=n + 1)
    return n, vectors, ids, g, queries


def test_search_latency_and_recall(benchmark, graph, claims):
    n, vectors, ids, g, queries = graph
    recall = []
    for q in queries:
        truth, _ = index.exact_search(vectors, ids, q, 10)
        got, _ = index.search_graph(g, q, 10, n, CONFIG.ef)
        recall.append(len(set(truth.tolist()) & set(got.tolist())) / 10)
    benchmark.group = "hnsw search k=10"
    state = {"i": 0}

    def one():
        state["i"] = (state["i"] + 1) % len(queries)
        index.search_graph(g, queries[state["i"]], 10, n, CONFIG.ef)

    benchmark(one)
    label = f"{n // 1000}k chunks"
    claims.add("index", f"HNSW recall@10 @ {label} (M={CONFIG.M}, efc={CONFIG.ef_construction}, ef={CONFIG.ef})",
               float(np.mean(recall)), "", target=">= 0.98" if n == 100_000 else None)
    claims.add("index", f"HNSW search p50 @ {label}", benchmark.stats.stats.median * 1e3, "ms")
    exact = [time.perf_counter()]
    for q in queries[:50]:
        index.exact_search(vectors, ids, q, 10)
    claims.add("index", f"exact search (NumPy) mean @ {label}", (time.perf_counter() - exact[0]) / 50 * 1e3, "ms")


def test_build_throughput_real_documents(tmp_path, embedder_dir, claims):
    from engine.embedder import Embedder
    from engine.kb.knowledge_base import KnowledgeBase

    embedder = Embedder(cache_dir=embedder_dir.parent)
    start = time.perf_counter()
    kb = KnowledgeBase.build([DOCS], tmp_path / "kb", embedder=embedder)
    elapsed = time.perf_counter() - start
    claims.add("index", "build throughput, bundled docs, fp32 embedder (200-token chunks)",
               kb.stats().chunks / elapsed, "chunks/s")
