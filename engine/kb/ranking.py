"""How one search ranks a knowledge base's chunks: dense (HNSW) and bm25 candidates, fused by
weighted reciprocal rank, diversified by MMR; and the weights, tuned on the bundled questions."""

from __future__ import annotations

import time

import numpy as np

from engine.kb import index, lexical, scoring
from engine.kb.results import Hit
from engine.kb.snapshot import Snapshot

# The search defaults are the best measured on the bundled questions (bench/bench_retrieval.py,
# ``test_bundled_qa_defaults``): tuned on half of the facts, reported on the other half.
#: MMR weight of relevance against redundancy that ``search`` uses unless given another. 1.0 (no
#: diversification): every lower value lost recall@4 on single-fact questions (0.7 cost ~2 points, 0.5 ~6).
MMR_LAMBDA = 1.0
#: Weight of the dense ranking in the reciprocal-rank fusion.
W_DENSE = 1.0
#: Weight of the bm25 ranking: bm25 alone finds fewer answers than dense search, but fused at
#: 0.75 it adds the exact names and numbers that dense search ranks too low.
W_LEXICAL = 0.75
#: Weight of the bm25 ranking for a query that names a code identifier (``lexical.names_identifier``):
#: recall@4 of questions naming a NumPy API 87 % with it against 80 % at ``W_LEXICAL`` (96 % against
#: 86 % on the identifier questions of the APIs it was not tuned on); the bundled questions' recall
#: did not change (bench/bench_retrieval.py ``test_technical_corpus_identifiers``). On the tuning half
#: 1.5, 2.0 and 3.0 tie (97.3 %) one question below 5.0, which would leave dense search almost no say.
W_LEXICAL_IDENTIFIER = 2.0
#: The fusion constant: 10 rewards the first ranks of each list more than the paper's 60.
K_RRF = 10.0


def lexical_weight(query: str) -> float:
    """The default bm25 weight of ``query``'s fusion: ``W_LEXICAL_IDENTIFIER`` when it names a code
    identifier, else ``W_LEXICAL``."""
    return W_LEXICAL_IDENTIFIER if lexical.names_identifier(query) else W_LEXICAL


def rank(gen: Snapshot, query: str, q: np.ndarray, k: int, n_candidates: int, mmr_lambda: float, w_dense: float,
          w_lexical: float, k_rrf: float) -> tuple[tuple[Hit, ...], tuple[float, float, float]]:
    """The hits of one search in ``gen``, and the milliseconds of its dense, lexical and scoring stages."""
    t1 = time.perf_counter()
    dense_ids, _ = index.search_graph(gen.graph, q, n_candidates, len(gen.ids), gen.manifest.hnsw_ef)
    t2 = time.perf_counter()
    lexical_ids, _ = gen.store.lexical_search(query, n_candidates)
    t3 = time.perf_counter()
    # MMR only looks at the best n_candidates fused: rank those, not the whole union.
    ids, fused = scoring.rrf_fuse(dense_ids, np.asarray(lexical_ids, np.int64), w_dense, w_lexical, k_rrf,
                                  top_n=n_candidates)
    if len(ids):
        rows = np.searchsorted(gen.ids, ids)
        relevance = fused / fused[0] if fused[0] > 0 else np.ones_like(fused)
        picked = scoring.mmr_select(gen.vectors[rows], relevance, k, mmr_lambda)
    else:
        picked = np.empty(0, np.int64)
    t4 = time.perf_counter()
    hits = tuple(Hit(c.chunk_id, c.text, c.source, (c.start_char, c.end_char), c.heading, float(fused[i]))
                 for c, i in zip(gen.store.get(ids[picked]), picked, strict=True))
    return hits, ((t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3)
