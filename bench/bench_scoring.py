"""Scoring kernels: each Numba kernel against its NumPy reference at 10k candidates.

``rrf_fuse`` is timed as the knowledge base calls it (``top_n=64``: MMR only looks at
the best fused candidates) against the NumPy reference with the same ``top_n``
(``np.unique`` + ``np.bincount`` + ``np.argpartition``); the full ranking of the
union (``top_n=None``) is reported too, without a target: there both sides sort.

Run: .venv/bin/python -m pytest bench/bench_scoring.py -o python_files='bench_*.py'
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.kb import scoring

N = 10_000


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return {
        "vectors": vectors,
        "relevance": rng.random(N),
        "tokens": rng.integers(5, 40, N),
        "dense": rng.permutation(2 * N)[:N],
        "lexical": rng.permutation(2 * N)[:N],
    }


TOP_N = 64

CASES = {
    f"rrf_fuse top_n={TOP_N}": (lambda x: scoring.rrf_fuse(x["dense"], x["lexical"], top_n=TOP_N),
                              lambda x: scoring.rrf_fuse_reference(x["dense"], x["lexical"], top_n=TOP_N)),
    "rrf_fuse full ranking": (lambda x: scoring.rrf_fuse(x["dense"], x["lexical"]),
                              lambda x: scoring.rrf_fuse_reference(x["dense"], x["lexical"])),
    "mmr_select k=10": (lambda x: scoring.mmr_select(x["vectors"], x["relevance"], 10),
                        lambda x: scoring.mmr_select_reference(x["vectors"], x["relevance"], 10)),
    "budget_select 512 tokens": (lambda x: scoring.budget_select(x["vectors"], x["relevance"], x["tokens"], 512),
                                 lambda x: scoring.budget_select_reference(x["vectors"], x["relevance"], x["tokens"], 512)),
}


def _best_of(fn, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_compile_time(claims, tmp_path):
    """First-call cost of the kernels in a fresh process: compiled from scratch, then from Numba's cache.

    ``KnowledgeBase.open`` pays this (``warm_up()``), never a user's first query.
    """
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    probe = [sys.executable, "-c", "from engine.kb import scoring; print(scoring.warm_up())"]
    cold, warm = (float(subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout)
                  for _ in range(2))
    claims.add("scoring", "kernels' first call in a new process, empty Numba cache (compile)", cold, "s")
    claims.add("scoring", "kernels' first call in a new process, from Numba's cache", warm, "s")
    claims.add("scoring", "warm_up() in this process (default Numba cache)", scoring.warm_up(), "s")


@pytest.mark.parametrize("name", list(CASES))
def test_numba_vs_numpy(benchmark, inputs, claims, name):
    fast, reference = CASES[name]
    benchmark.group = f"scoring {name} @ {N}"
    benchmark.extra_info["reference_s"] = reference_s = _best_of(lambda: reference(inputs), 3)
    benchmark(lambda: fast(inputs))
    numba_s = benchmark.stats.stats.min
    claims.add("scoring", f"{name}: Numba speed-up over NumPy @ 10k candidates", reference_s / numba_s, "x",
               target=None if name == "rrf_fuse full ranking" else ">= 5")
