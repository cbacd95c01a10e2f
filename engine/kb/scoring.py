"""Scoring retrieved chunks: fuse dense and lexical candidates, diversify, trim to a budget.

Three Numba kernels, each beside a plain NumPy reference that computes the same
thing (tests/kb/test_scoring.py holds them to agreement; bench/bench_scoring.py times
them):

- ``rrf_fuse``: weighted reciprocal-rank fusion of two ranked id lists into one
  candidate set with fused scores. The kernel unions by hashing and keeps the best
  ``top_n`` in a bounded heap (O(n log top_n)); the reference sorts the union with
  ``np.unique`` and a stable argsort, as a NumPy user would.
- ``mmr_select``: maximal marginal relevance, ``mmr_lambda * relevance - (1 - mmr_lambda) * max(0,
  max similarity to what is already chosen)``, greedy. The kernel evaluates lazily
  (a candidate's score can only fall as the selection grows, so a max-heap of stale
  upper bounds finds the argmax after recomputing a handful of candidates); the
  reference recomputes every candidate at every step. Same result, ties to the
  lower index.
- ``budget_select``: the same greedy MMR under a token budget (a candidate that no
  longer fits is dropped), used by ``select_sentences`` to keep the most relevant,
  least redundant sentences of the chosen chunks.

Similarities are accumulated in float64 in both implementations so that their
choices agree exactly on real data. ``warm_up()`` compiles (or loads from Numba's
on-disk cache) every kernel and returns the seconds it took;
``KnowledgeBase.open`` calls it so compilation never lands on a user's first query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from engine.errors import InputError
from engine.text import split_sentences

# ----------------------------------------------------------------------------- fusion


@njit(cache=True, nogil=True, inline="always")
def _worse(score_a, id_a, score_b, id_b):
    """Fused order: a ranks below b (lower score, or equal score and higher id)."""
    return score_a < score_b or (score_a == score_b and id_a > id_b)


@njit(cache=True, nogil=True, inline="always")
def _above(keys, ids, a, b, worst_on_top):
    """Entry ``a`` belongs above entry ``b``: the worse of the two in a heap of the worst
    (``worst_on_top``, rrf's top-n), else the better (MMR's candidates)."""
    if worst_on_top:
        return _worse(keys[a], ids[a], keys[b], ids[b])
    return _worse(keys[b], ids[b], keys[a], ids[a])


@njit(cache=True, nogil=True)
def _sift_down(keys, ids, size, i, worst_on_top):
    """Restore a binary heap of ``(keys, ids)`` in fused order (score, then id) from ``i`` down."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        top = left
        right = left + 1
        if right < size and _above(keys, ids, right, left, worst_on_top):
            top = right
        if _above(keys, ids, top, i, worst_on_top):
            keys[i], keys[top] = keys[top], keys[i]
            ids[i], ids[top] = ids[top], ids[i]
            i = top
        else:
            return


@njit(cache=True, nogil=True)
def _rrf_fuse_kernel(dense_ids, lexical_ids, w_dense, w_lexical, k_rrf, top_n):
    n = dense_ids.shape[0] + lexical_ids.shape[0]
    # Union by open addressing (linear probing) in a power-of-two table: O(n), no sort.
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    slot_of = np.full(size, -1, np.int64)
    ids = np.empty(n, np.int64)
    scores = np.zeros(n, np.float64)
    m = 0
    for r in range(n):
        if r < dense_ids.shape[0]:
            key = dense_ids[r]
            gain = w_dense / (k_rrf + r + 1.0)
        else:
            key = lexical_ids[r - dense_ids.shape[0]]
            gain = w_lexical / (k_rrf + (r - dense_ids.shape[0]) + 1.0)
        h = (np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
        s = np.int64(h) & mask
        while slot_of[s] >= 0 and ids[slot_of[s]] != key:
            s = (s + 1) & mask
        if slot_of[s] < 0:
            slot_of[s] = m
            ids[m] = key
            m += 1
        scores[slot_of[s]] += gain
    # Keep the best `keep` in a heap whose root is the worst kept: O(m log keep), not a full sort.
    keep = min(top_n, m)
    heap_scores = np.empty(keep, np.float64)
    heap_ids = np.empty(keep, np.int64)
    for i in range(keep):
        heap_scores[i] = scores[i]
        heap_ids[i] = ids[i]
    for i in range(keep // 2 - 1, -1, -1):
        _sift_down(heap_scores, heap_ids, keep, i, True)
    for i in range(keep, m):
        if keep > 0 and _worse(heap_scores[0], heap_ids[0], scores[i], ids[i]):
            heap_scores[0] = scores[i]
            heap_ids[0] = ids[i]
            _sift_down(heap_scores, heap_ids, keep, 0, True)
    # Pop the worst to the back, one by one: the array ends up best first.
    for end in range(keep - 1, 0, -1):
        heap_scores[0], heap_scores[end] = heap_scores[end], heap_scores[0]
        heap_ids[0], heap_ids[end] = heap_ids[end], heap_ids[0]
        _sift_down(heap_scores, heap_ids, end, 0, True)
    return heap_ids, heap_scores


def _check_top_n(top_n: int | None) -> int:
    if top_n is None:
        return np.iinfo(np.int64).max
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise InputError(f"top_n={top_n!r} must be a whole number >= 0 (or None for every candidate)")
    return int(top_n)


def rrf_fuse_reference(dense_ids: np.ndarray, lexical_ids: np.ndarray, w_dense: float = 1.0,
                       w_lexical: float = 1.0, k_rrf: float = 60.0,
                       top_n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of ``rrf_fuse``: ``np.unique`` + ``np.bincount``, ``np.argpartition`` to the cut, stable argsort."""
    top_n = _check_top_n(top_n)
    dense_ids = np.asarray(dense_ids, np.int64)
    lexical_ids = np.asarray(lexical_ids, np.int64)
    contrib = np.concatenate([w_dense / (k_rrf + np.arange(1, len(dense_ids) + 1, dtype=np.float64)),
                              w_lexical / (k_rrf + np.arange(1, len(lexical_ids) + 1, dtype=np.float64))])
    ids, inverse = np.unique(np.concatenate([dense_ids, lexical_ids]), return_inverse=True)
    scores = np.bincount(inverse, weights=contrib, minlength=len(ids)).astype(np.float64)
    rows = np.arange(len(ids))
    if top_n < len(ids):
        # argpartition finds the cut score; keep every row at or above it (ties at the cut included).
        cut = scores[np.argpartition(-scores, top_n - 1)[top_n - 1]] if top_n else np.inf
        rows = np.flatnonzero(scores >= cut)
    # ids are ascending, so a stable sort leaves equal scores in ascending id order.
    rank = rows[np.argsort(-scores[rows], kind="stable")][:top_n]
    return ids[rank], scores[rank]


def rrf_fuse(dense_ids: np.ndarray, lexical_ids: np.ndarray, w_dense: float = 1.0,
             w_lexical: float = 1.0, k_rrf: float = 60.0, top_n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion of two ranked lists of ids (each best first, no repeats).

    A candidate at 0-based rank ``r`` of a list gains ``w / (k_rrf + r + 1)``. Only the
    best ``top_n`` are ranked (a bounded heap, O(n log top_n)), so asking for the few
    candidates MMR will look at costs far less than ordering the whole union.

    Args:
        dense_ids, lexical_ids: ranked ids, best first.
        w_dense, w_lexical: weight of each list.
        k_rrf: the fusion constant (60 in the original paper).
        top_n: how many fused candidates to return; ``None`` for all of them.

    Returns:
        ``(ids, scores)``: the best ``top_n`` of the union of both lists, best fused score
        first; equal scores in ascending id order.

    Raises:
        InputError: ``top_n`` is negative or not a whole number.
    """
    return _rrf_fuse_kernel(np.ascontiguousarray(dense_ids, np.int64), np.ascontiguousarray(lexical_ids, np.int64),
                            float(w_dense), float(w_lexical), float(k_rrf), _check_top_n(top_n))


# ----------------------------------------------------------------------------- greedy MMR


@njit(cache=True, nogil=True)
def _lazy_greedy(vectors, relevance, tokens, budget, k, lam):
    """Greedy MMR with lazy re-evaluation; ``budget < 0`` means no token budget."""
    n = relevance.shape[0]
    d = vectors.shape[1]
    selected = np.empty(min(k, n), np.int64)
    if n == 0 or k <= 0:
        return selected[:0]
    keys = np.empty(n, np.float64)
    idx = np.empty(n, np.int64)
    for i in range(n):
        keys[i] = lam * relevance[i]
        idx[i] = i
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(keys, idx, n, i, False)
    size = n
    maxsim = np.zeros(n, np.float64)
    seen = np.zeros(n, np.int64)
    count = 0
    remaining = budget
    while count < selected.shape[0] and size > 0:
        i = idx[0]
        if budget >= 0 and tokens[i] > remaining:
            size -= 1
            keys[0] = keys[size]
            idx[0] = idx[size]
            _sift_down(keys, idx, size, 0, False)
            continue
        if seen[i] < count:
            best = maxsim[i]
            for s in range(seen[i], count):
                j = selected[s]
                acc = 0.0
                for c in range(d):
                    acc += np.float64(vectors[i, c]) * np.float64(vectors[j, c])
                if acc > best:
                    best = acc
            maxsim[i] = best
            seen[i] = count
            keys[0] = lam * relevance[i] - (1.0 - lam) * best
            _sift_down(keys, idx, size, 0, False)
            continue
        selected[count] = i
        count += 1
        if budget >= 0:
            remaining -= tokens[i]
        size -= 1
        keys[0] = keys[size]
        idx[0] = idx[size]
        _sift_down(keys, idx, size, 0, False)
    return selected[:count]


def _greedy_reference(vectors, relevance, tokens, budget, k, lam):
    n = len(relevance)
    vectors = np.asarray(vectors, np.float64)
    relevance = np.asarray(relevance, np.float64)
    maxsim = np.zeros(n)
    available = np.ones(n, bool)
    remaining = budget
    selected: list[int] = []
    while len(selected) < min(k, n):
        if budget >= 0:
            available &= tokens <= remaining
        if not available.any():
            break
        score = lam * relevance - (1.0 - lam) * maxsim
        score[~available] = -np.inf
        i = int(np.argmax(score))
        selected.append(i)
        available[i] = False
        if budget >= 0:
            remaining -= tokens[i]
        np.maximum(maxsim, vectors @ vectors[i], out=maxsim)
    return np.asarray(selected, np.int64)


def _check_greedy(vectors, relevance, mmr_lambda):
    vectors = np.ascontiguousarray(vectors)
    relevance = np.ascontiguousarray(relevance, np.float64)
    if vectors.ndim != 2 or len(vectors) != len(relevance):
        raise InputError(f"vectors {vectors.shape} and relevance {relevance.shape} must have one row per candidate")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise InputError(f"mmr_lambda={mmr_lambda} must be between 0 (diversity only) and 1 (relevance only)")
    return vectors, relevance


def mmr_select(vectors: np.ndarray, relevance: np.ndarray, k: int, mmr_lambda: float = 0.7) -> np.ndarray:
    """Pick ``k`` candidates by maximal marginal relevance (greedy, ties to the lower index).

    Args:
        vectors: ``(n, d)`` L2-normalised candidate embeddings (float32 or float64).
        relevance: ``(n,)`` relevance of each candidate, best near 1 (e.g. normalised fused score).
        k: how many to pick; all of them when ``k >= n``.
        mmr_lambda: weight of relevance against redundancy, in ``[0, 1]``.

    Returns:
        Indices into the candidates, in the order picked.

    Raises:
        InputError: shapes disagree or ``mmr_lambda`` is outside ``[0, 1]``.
    """
    vectors, relevance = _check_greedy(vectors, relevance, mmr_lambda)
    return _lazy_greedy(vectors, relevance, np.zeros(len(relevance), np.int64), -1, int(k), float(mmr_lambda))


def mmr_select_reference(vectors: np.ndarray, relevance: np.ndarray, k: int, mmr_lambda: float = 0.7) -> np.ndarray:
    """NumPy reference of ``mmr_select``."""
    vectors, relevance = _check_greedy(vectors, relevance, mmr_lambda)
    return _greedy_reference(vectors, relevance, np.zeros(len(relevance), np.int64), -1, int(k), float(mmr_lambda))


def budget_select(vectors: np.ndarray, relevance: np.ndarray, tokens: np.ndarray, budget_tokens: int,
                  mmr_lambda: float = 0.7) -> np.ndarray:
    """Greedy MMR under a token budget: indices picked, in order, whose ``tokens`` sum to at most ``budget_tokens``."""
    vectors, relevance = _check_greedy(vectors, relevance, mmr_lambda)
    if budget_tokens < 0:
        raise InputError(f"budget_tokens={budget_tokens} must be >= 0")
    tokens = np.ascontiguousarray(tokens, np.int64)
    return _lazy_greedy(vectors, relevance, tokens, int(budget_tokens), len(relevance), float(mmr_lambda))


def budget_select_reference(vectors: np.ndarray, relevance: np.ndarray, tokens: np.ndarray, budget_tokens: int,
                            mmr_lambda: float = 0.7) -> np.ndarray:
    """NumPy reference of ``budget_select``."""
    vectors, relevance = _check_greedy(vectors, relevance, mmr_lambda)
    tokens = np.asarray(tokens, np.int64)
    return _greedy_reference(vectors, relevance, tokens, int(budget_tokens), len(relevance), float(mmr_lambda))


# ----------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class SelectedSentence:
    """A sentence kept for the prompt: which chunk, its text, its span in the source document."""

    chunk_index: int
    text: str
    start_char: int
    end_char: int
    tokens: int
    relevance: float


def select_sentences(chunks: Sequence[tuple[str, int]], query_embedding: np.ndarray, budget_tokens: int,
                     embed: Callable[[list[str]], np.ndarray], count_tokens: Callable[[str], int],
                     *, mmr_lambda: float = 0.7) -> list[SelectedSentence]:
    """The most relevant, least redundant sentences of ``chunks`` that fit ``budget_tokens``.

    Sentences are cut by ``engine.text.split_sentences``, the splitter chunking shares.

    Args:
        chunks: ``(text, start_char)`` of each chosen chunk (``Hit.text``, ``Hit.span[0]``).
        query_embedding: ``(d,)`` normalised query vector.
        budget_tokens: most tokens (embedder tokenizer) the selected sentences may total.
        embed: the embedder's ``embed`` (normalised rows).
        count_tokens: the embedder's ``count_tokens``.
        mmr_lambda: relevance against redundancy, in ``[0, 1]``.

    Returns:
        Selected sentences in reading order (chunk order, then position), with spans
        in the source document.
    """
    items = []
    for index, (text, start) in enumerate(chunks):
        for a, b in split_sentences(text):
            items.append((index, text[a:b], start + a, start + b))
    if not items or budget_tokens <= 0:
        return []
    vectors = np.asarray(embed([t for _, t, _, _ in items]), np.float32)
    relevance = vectors.astype(np.float64) @ np.asarray(query_embedding, np.float64)
    tokens = np.array([count_tokens(t) for _, t, _, _ in items], np.int64)
    picked = budget_select(vectors, relevance, tokens, budget_tokens, mmr_lambda)
    out = [SelectedSentence(items[i][0], items[i][1], items[i][2], items[i][3], int(tokens[i]), float(relevance[i]))
           for i in picked]
    return sorted(out, key=lambda s: (s.chunk_index, s.start_char))


# ----------------------------------------------------------------------------- warm-up


def warm_up() -> float:
    """Compile every kernel (or load it from Numba's cache); returns the seconds it took."""
    start = time.perf_counter()
    ids = np.arange(3, dtype=np.int64)
    rrf_fuse(ids, ids[::-1].copy(), top_n=2)
    vectors = np.eye(3, dtype=np.float32)
    relevance = np.array([0.5, 0.2, 0.1])
    mmr_select(vectors, relevance, 2)
    mmr_select(vectors.astype(np.float64), relevance, 2)
    budget_select(vectors, relevance, np.ones(3, np.int64), 2)
    return time.perf_counter() - start
