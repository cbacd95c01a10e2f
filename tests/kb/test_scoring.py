"""Numba scoring kernels agree with their NumPy references; sentence selection respects its budget."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.kb import scoring

SIZES = [0, 1, 2, 7, 100, 1000, 10_000]


def _unit(rng: np.random.Generator, n: int, d: int = 384) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("top_n", [None, 0, 1, 10, 64, 5000])
def test_rrf_fuse_agrees_with_numpy(n, top_n):
    rng = np.random.default_rng(n)
    dense = rng.permutation(3 * n + 1)[:n]
    lexical = rng.permutation(3 * n + 1)[: n // 2]
    ids, scores = scoring.rrf_fuse(dense, lexical, 1.0, 0.7, 60.0, top_n=top_n)
    ref_ids, ref_scores = scoring.rrf_fuse_reference(dense, lexical, 1.0, 0.7, 60.0, top_n=top_n)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-12)
    union = len(np.union1d(dense, lexical))
    assert len(ids) == (union if top_n is None else min(top_n, union))


@pytest.mark.parametrize("seed", range(20))
def test_rrf_fuse_ties_and_shared_ids_agree_with_numpy_at_every_cut(seed):
    # Equal weights and lists that are permutations of each other make many exact ties,
    # including at the top_n boundary; small id ranges make most ids appear in both lists.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    dense = rng.permutation(n + int(rng.integers(0, 20)))[:n]
    lexical = rng.permutation(dense)[: int(rng.integers(0, n + 1))]
    for top_n in [None, 0, 1, 2, 3, n // 3, n // 2, n, 2 * n]:
        ids, scores = scoring.rrf_fuse(dense, lexical, top_n=top_n)
        ref_ids, ref_scores = scoring.rrf_fuse_reference(dense, lexical, top_n=top_n)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)


def test_rrf_ties_are_broken_by_ascending_id():
    ids, scores = scoring.rrf_fuse(np.array([9, 4]), np.array([3, 8]))
    np.testing.assert_array_equal(ids, [3, 9, 4, 8])
    assert scores[0] == scores[1] and scores[2] == scores[3]
    ids, _ = scoring.rrf_fuse(np.array([5, 6]), np.array([6, 5]))
    np.testing.assert_array_equal(ids, [5, 6])
    ids, _ = scoring.rrf_fuse(np.array([9, 4]), np.array([3, 8]), top_n=3)
    np.testing.assert_array_equal(ids, [3, 9, 4])  # the tie at the cut keeps the lower id


def test_rrf_top_n_is_the_head_of_the_full_ranking():
    rng = np.random.default_rng(11)
    dense, lexical = rng.permutation(5000)[:2000], rng.permutation(5000)[:2000]
    full_ids, full_scores = scoring.rrf_fuse(dense, lexical)
    ids, scores = scoring.rrf_fuse(dense, lexical, top_n=64)
    np.testing.assert_array_equal(ids, full_ids[:64])
    np.testing.assert_array_equal(scores, full_scores[:64])


@pytest.mark.parametrize("top_n", [-1, 2.5, True, "10"])
def test_rrf_rejects_a_bad_top_n(top_n):
    with pytest.raises(InputError, match="top_n"):
        scoring.rrf_fuse(np.array([1, 2]), np.array([2, 3]), top_n=top_n)


def test_rrf_of_nothing_is_nothing():
    ids, scores = scoring.rrf_fuse(np.array([], np.int64), np.array([], np.int64))
    assert ids.shape == scores.shape == (0,)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.7, 1.0])
def test_mmr_select_agrees_with_numpy(n, k, lam):
    if n == 10_000 and (k == 50 or lam == 0.0):
        pytest.skip("the reference is slow at this size; covered by smaller sizes")
    rng = np.random.default_rng(1000 * n + k)
    vectors, relevance = _unit(rng, n), rng.random(n)
    got = scoring.mmr_select(vectors, relevance, k, lam)
    np.testing.assert_array_equal(got, scoring.mmr_select_reference(vectors, relevance, k, lam))
    assert len(got) == min(k, n) and len(set(got.tolist())) == len(got)


def test_mmr_with_k_larger_than_n_returns_every_candidate():
    rng = np.random.default_rng(3)
    vectors, relevance = _unit(rng, 5), rng.random(5)
    got = scoring.mmr_select(vectors, relevance, 50)
    assert sorted(got.tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(got, scoring.mmr_select_reference(vectors, relevance, 50))


def test_mmr_ties_go_to_the_lower_index_and_duplicates_are_pushed_down():
    base = _unit(np.random.default_rng(4), 3)
    vectors = np.vstack([base[0], base[0], base[1], base[2]])  # candidates 0 and 1 are the same text
    relevance = np.array([0.9, 0.9, 0.5, 0.5])
    got = scoring.mmr_select(vectors, relevance, 4, 0.5)
    np.testing.assert_array_equal(got, scoring.mmr_select_reference(vectors, relevance, 4, 0.5))
    assert got[0] == 0 and got[-1] == 1
    equal = np.ones((6, 8), np.float32) / np.sqrt(8)
    np.testing.assert_array_equal(scoring.mmr_select(equal, np.full(6, 0.5), 6), np.arange(6))


def test_mmr_accepts_float64_and_rejects_bad_arguments():
    rng = np.random.default_rng(5)
    vectors, relevance = _unit(rng, 20).astype(np.float64), rng.random(20)
    np.testing.assert_array_equal(scoring.mmr_select(vectors, relevance, 5),
                                  scoring.mmr_select_reference(vectors, relevance, 5))
    with pytest.raises(InputError, match="lam"):
        scoring.mmr_select(vectors, relevance, 5, mmr_lambda=1.5)
    with pytest.raises(InputError, match="one row per candidate"):
        scoring.mmr_select(vectors, relevance[:3], 5)


@pytest.mark.parametrize("n", [0, 1, 7, 100, 1000, 10_000])
@pytest.mark.parametrize("budget", [0, 5, 64, 400])
def test_budget_select_agrees_with_numpy_and_fits_the_budget(n, budget):
    rng = np.random.default_rng(n + budget)
    vectors, relevance = _unit(rng, n), rng.random(n)
    tokens = rng.integers(1, 40, n)
    got = scoring.budget_select(vectors, relevance, tokens, budget)
    np.testing.assert_array_equal(got, scoring.budget_select_reference(vectors, relevance, tokens, budget))
    assert tokens[got].sum() <= budget
    if n and budget >= 400:
        assert budget - tokens[got].sum() < tokens.min() or len(got) == n  # greedy fills what fits


def test_warm_up_reports_compile_seconds():
    seconds = scoring.warm_up()
    assert 0 <= seconds < 120
    assert scoring.warm_up() < 0.5  # compiled (or loaded from cache) once per process


def test_select_sentences_keeps_relevant_sentences_under_the_budget(embedder_dir):
    from engine.embedding.embedder import Embedder

    embedder = Embedder(cache_dir=embedder_dir.parent)
    document = ("Intro. The warranty lasts two years. Frost damage is not covered. "
                "The warranty lasts two years from purchase. Offices are in Leeds.")
    chunks = [(document[6:], 6), ("Pumps need water. The B3 weighs 2.9 kg.", 500)]
    query = embedder.embed_query("How long is the warranty?")
    picked = scoring.select_sentences(chunks, query, 16, embedder.embed, embedder.count_tokens)
    assert picked and sum(s.tokens for s in picked) <= 16
    assert any("two years" in s.text for s in picked)
    for sentence in picked:
        if sentence.chunk_index == 0:
            assert document[sentence.start_char:sentence.end_char] == sentence.text
    assert picked == sorted(picked, key=lambda s: (s.chunk_index, s.start_char))
    assert scoring.select_sentences(chunks, query, 0, embedder.embed, embedder.count_tokens) == []


def test_split_sentences_keeps_version_numbers_and_prices_whole():
    from engine.text import split_sentences

    text = "Factory firmware: version 2.3.1 is shipped. It costs €39.90! Really?\n- Weight: 2.9 kg"
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Factory firmware: version 2.3.1 is shipped.", "It costs €39.90!", "Really?", "- Weight: 2.9 kg"]
