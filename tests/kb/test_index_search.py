"""The dense search's ef: the configured one for small graphs, larger for large ones."""

from __future__ import annotations

import numpy as np

from engine.kb import index
from engine.kb.index import EF_SCALE_FROM, HnswConfig


def test_small_graphs_search_with_the_configured_ef_and_large_ones_with_more():
    assert index.scaled_ef(24, 1_000) == index.scaled_ef(24, EF_SCALE_FROM) == 24
    assert index.scaled_ef(24, 1_000_000) == 96  # recall@10 0.97 at 1M in bench_scale.py, where 24 gave 0.85
    grown = [index.scaled_ef(24, n) for n in (300_000, 1_000_000, 10_000_000)]
    assert grown == sorted(set(grown)) and grown[0] > 24


def test_search_graph_still_finds_the_exact_neighbours_of_a_small_graph():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(500, dtype=np.int64) * 3
    graph = index.build_graph(vectors, ids, HnswConfig(), threads=1)
    found, _ = index.search_graph(graph, vectors[7], 5, 500, HnswConfig().ef)
    truth, _ = index.exact_search(vectors, ids, vectors[7], 5)
    assert found[0] == 21 and set(found.tolist()) == set(truth.tolist())
