"""What a knowledge base answers with: search hits, their timings, and its statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.kb.chunking import ChunkingConfig
from engine.kb.index import HnswConfig


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk.

    Attributes:
        chunk_id: the chunk's id in this knowledge base.
        text: the chunk's text, exactly ``document[span[0]:span[1]]``.
        source: absolute path of the document.
        span: ``(start_char, end_char)`` character offsets in the document (UTF-8 decoded, BOM dropped).
        heading: Markdown heading trail above the chunk ("Manual > Safety"), ``""`` if none.
        score: fused relevance (weighted reciprocal-rank fusion of dense and bm25 ranks); higher is
            better. Hits come in MMR order, so a later hit may score higher than an earlier one
            that was chosen for being less redundant.
    """

    chunk_id: int
    text: str
    source: str
    span: tuple[int, int]
    heading: str
    score: float


@dataclass(frozen=True)
class SearchTimings:
    """Wall time of each retrieval stage, in milliseconds."""

    embed_ms: float
    dense_search_ms: float
    lexical_search_ms: float
    scoring_ms: float
    total_ms: float


@dataclass(frozen=True)
class SearchResult:
    """Hits best first, stage timings, whether the query was cut to the embedder's window, and
    whether its vector came from the query cache (an exact repeat: ``timings.embed_ms`` is then
    the cache lookup)."""

    query: str
    hits: tuple[Hit, ...]
    timings: SearchTimings
    query_truncated: bool
    query_embedding: np.ndarray
    query_cached: bool = False


@dataclass(frozen=True)
class KnowledgeBaseStats:
    """What a knowledge base holds and how it was built; how this object embeds queries
    (``query_variant``) and how many of its queries were exact repeats (``query_cache_hits``)
    or were embedded (``query_cache_misses``)."""

    path: str
    generation: str
    documents: int
    chunks: int
    embedder_model: str
    embedder_variant: str
    dim: int
    chunking: ChunkingConfig
    hnsw: HnswConfig
    size_bytes: int
    warm_up_s: float
    query_variant: str = "fp32"
    query_cache_hits: int = 0
    query_cache_misses: int = 0
