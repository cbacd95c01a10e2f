"""Scale curves of the dense index: 1k, 10k, 100k and 1M chunks, and what a 1M-chunk knowledge base costs.

Vectors are bench_index's embedding-like synthetic data (``REALISTIC``, calibrated there
against real MiniLM vectors); queries are fresh draws from the same distribution. At
each size: build time, resident memory of the loaded graph (RSS growth of this process,
an approximation) and its file size, search p50 with the vector given (k=10), and
recall@10 against exact inner-product search. bakeoff's graph (hnswlib, ``HnswConfig``
defaults) is cached under bench/results/ as bench_index caches it; FAISS HNSW (the same
M, efConstruction, efSearch) and FAISS flat (exact) run beside it when the ``[peers]``
extra is installed. The real corpora (the bundled documents, bench_retrieval's 10k
knowledge base when built) are measured the same way at their own sizes.

Searches use ``index.scaled_ef`` (ef 24 up to 100k elements, 96 at 1M); at 1M the raw
hnswlib ``ef`` is also swept, so the recall and latency of each choice are printed. The disk cost of a 1M-chunk knowledge base is the measured graph and
vector files at 1M plus the chunk store, extrapolated linearly from the bytes per chunk
of the real knowledge bases (32-token and 200-token chunks).

Run: .venv/bin/python -m pytest bench/bench_scale.py -o python_files='bench_*.py'
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest
from bench_index import DIM, REALISTIC, _graph
from sizes import folder_bytes, rss_bytes

from engine.kb import index
from engine.kb.index import HnswConfig

RESULTS = Path(__file__).parent / "results"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUERIES = 200
K = 10
CONFIG = HnswConfig()
EF_SWEEP = (24, 32, 48, 64, 96)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K, block: int = 131_072) -> np.ndarray:
    """Exact top-``k`` rows by inner product for every query, in blocks of rows (bounded memory)."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ vectors[start:start + block].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_rows = np.take_along_axis(merged_rows, keep, 1)
    return best_rows


def _measure(search, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(search p50 in ms, recall@K) of ``search(vector) -> row ids``, after a burn-in."""
    for q in queries[:20]:
        search(q)
    times, hits = [], 0
    for q, expected in zip(queries, truth):
        start = time.perf_counter()
        found = search(q)
        times.append(time.perf_counter() - start)
        hits += len(set(expected.tolist()) & set(np.asarray(found).tolist()))
    return float(np.median(times)) * 1e3, hits / (K * len(queries))


def _loaded_graph(n: int, vectors: np.ndarray) -> tuple[hnswlib.Index, float, int, int]:
    """bench_index's cached graph for these vectors: (graph loaded anew, build s, RSS growth, file bytes)."""
    _, build_s = _graph(vectors, REALISTIC, CONFIG)  # builds and caches on first use
    path = RESULTS / f"hnsw-{n}-data{REALISTIC.key()}-M{CONFIG.M}-efc{CONFIG.ef_construction}.bin"
    before = rss_bytes()
    graph = hnswlib.Index(space="ip", dim=DIM)
    graph.load_index(str(path))
    graph.set_num_threads(1)
    return graph, build_s, rss_bytes() - before, path.stat().st_size


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n // 1000}k")
def test_scale_curve(n, claims):
    vectors, queries = REALISTIC.sample(n, QUERIES)
    truth = exact_top(vectors, queries)
    graph, build_s, rss, file_bytes = _loaded_graph(n, vectors)
    group = f"scale {n:,} chunks (embedding-like)"
    ef = index.scaled_ef(CONFIG.ef, n)  # what a search of this graph uses
    p50, recall = _measure(lambda q: index.search_graph(graph, q, K, n, CONFIG.ef)[0], queries, truth)
    claims.add(group, f"bakeoff HNSW build (M={CONFIG.M}, efc={CONFIG.ef_construction}, all cores)", build_s, "s")
    claims.add(group, f"bakeoff HNSW search p50 (ef={ef}, vector given)", p50, "ms",
               target="<= 2" if n == 1_000_000 else None)
    claims.add(group, f"bakeoff HNSW recall@{K} (ef={ef})", recall, "",
               target=">= 0.95" if n == 1_000_000 else None)
    claims.add(group, "bakeoff HNSW graph: RSS growth on load", rss / 2**20, "MiB")
    claims.add(group, "bakeoff HNSW graph file", file_bytes / 2**20, "MiB")
    if n == 1_000_000:
        for ef in EF_SWEEP:  # hnswlib itself: search_graph would scale these
            graph.set_ef(ef)
            p50, recall = _measure(lambda q: graph.knn_query(q[None, :], k=K)[0][0], queries, truth)
            claims.add(group, f"bakeoff HNSW ef={ef}: search p50", p50, "ms")
            claims.add(group, f"bakeoff HNSW ef={ef}: recall@{K}", recall, "")
        vector_bytes = vectors.nbytes + 8 * n  # vectors.npy + ids.npy
        _disk_at_1m(claims, group, file_bytes + vector_bytes)
    del graph
    _faiss_at(n, vectors, queries, truth, claims, group)


def _faiss_at(n: int, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, claims, group: str) -> None:
    """FAISS HNSW (bakeoff's M, efConstruction and, at each size, its search ef) and flat, beside bakeoff's.
    The HNSW index is cached under bench/results/ like bakeoff's graph (17 min to build at 1M)."""
    try:
        import faiss
    except ImportError:
        claims.add(group, 'FAISS skipped: install the "peers" extra', 0, "")
        return
    for kind in ("hnsw", "flat"):
        cache = RESULTS / f"faiss-hnsw-{n}-data{REALISTIC.key()}-M{CONFIG.M}-efc{CONFIG.ef_construction}.index"
        before = rss_bytes()
        if kind == "hnsw" and cache.exists():
            built = faiss.read_index(str(cache))
            build_s = json.loads(cache.with_suffix(".json").read_text())["build_s"]
        else:
            built = faiss.IndexHNSWFlat(DIM, CONFIG.M, faiss.METRIC_INNER_PRODUCT) if kind == "hnsw" \
                else faiss.IndexFlatIP(DIM)
            if kind == "hnsw":
                built.hnsw.efConstruction = CONFIG.ef_construction
            faiss.omp_set_num_threads(0)  # build on all cores, like hnswlib's
            start = time.perf_counter()
            built.add(vectors)
            build_s = time.perf_counter() - start
            if kind == "hnsw" and n >= 100_000:
                faiss.write_index(built, str(cache))
                cache.with_suffix(".json").write_text(json.dumps({"build_s": build_s}))
        rss = rss_bytes() - before
        faiss.omp_set_num_threads(1)  # one query at a time, as bakeoff searches
        if kind == "hnsw":
            built.hnsw.efSearch = index.scaled_ef(CONFIG.ef, n)
        p50, recall = _measure(lambda q: built.search(q[None, :], K)[1][0], queries, truth)
        ef = f" (efSearch={index.scaled_ef(CONFIG.ef, n)})" if kind == "hnsw" else ""
        claims.add(group, f"FAISS {kind} build", build_s, "s")
        claims.add(group, f"FAISS {kind} search p50 (vector given){ef}", p50, "ms")
        claims.add(group, f"FAISS {kind} recall@{K}{ef}", recall, "")
        claims.add(group, f"FAISS {kind}: RSS growth while building or loading", rss / 2**20, "MiB")
        del built


def _disk_at_1m(claims, group: str, dense_bytes: int) -> None:
    """The 1M-chunk knowledge base on disk: measured dense files plus the chunk store per chunk."""
    from engine.kb.manifest import read as read_manifest

    claims.add(group, "1M-chunk KB: graph + vectors + ids (measured)", dense_bytes / 2**30, "GiB")
    for name in ("kb-10k", "kb-numpy"):
        folder = RESULTS / name
        if not (folder / "manifest.json").exists():
            continue
        current = read_manifest(folder)
        store = folder_bytes(folder / current.generation / "chunks.sqlite")
        per_chunk = store / current.chunks
        claims.add(group, f"1M-chunk KB: chunk store at {per_chunk:.0f} B/chunk ({name}, "
                   f"{current.chunk_tokens}-token chunks)", per_chunk * 1_000_000 / 2**30, "GiB")
        claims.add(group, f"1M-chunk KB total ({name}'s chunk size)", (dense_bytes + per_chunk * 1_000_000) / 2**30,
                   "GiB")


def test_real_corpora(claims, embedder_dir):
    """The same measures on real MiniLM vectors of the knowledge bases the other benchmarks build."""
    for name in ("kb-10k", "kb-numpy"):
        folder = RESULTS / name
        vectors_files = sorted(folder.glob("gen-*/vectors.npy"))
        if not vectors_files:
            continue
        vectors = np.load(vectors_files[-1])
        rng = np.random.default_rng(0)
        rows = rng.choice(len(vectors), QUERIES, replace=False)
        # Held-out queries: each chunk's vector searched in a graph built without it.
        keep = np.setdiff1d(np.arange(len(vectors)), rows)
        start = time.perf_counter()
        graph = index.build_graph(vectors[keep], keep.astype(np.int64), CONFIG)
        build_s = time.perf_counter() - start
        graph.set_num_threads(1)
        queries = vectors[rows]
        truth = keep[exact_top(vectors[keep], queries)]
        p50, recall = _measure(lambda q: index.search_graph(graph, q, K, len(keep), CONFIG.ef)[0], queries, truth)
        group = f"scale real MiniLM vectors, {name} ({len(keep):,} chunks)"
        claims.add(group, "bakeoff HNSW build", build_s, "s")
        claims.add(group, f"bakeoff HNSW search p50 (ef={CONFIG.ef})", p50, "ms")
        claims.add(group, f"bakeoff HNSW recall@{K} (ef={CONFIG.ef})", recall, "")
