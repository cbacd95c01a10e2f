"""Knowledge base: documents → token-aware chunks → embeddings in HNSW + chunks in SQLite/FTS5.

See ``engine/kb/knowledge_base.py`` for the folder layout and the decisions a user
can notice (atomic writes, locking, verification, duplicates, skips).
"""

from engine.kb.chunking import Chunk, ChunkingConfig
from engine.kb.documents import SkippedFile
from engine.kb.index import HnswConfig
from engine.kb.knowledge_base import KnowledgeBase
from engine.kb.results import Hit, KnowledgeBaseStats, SearchResult, SearchTimings
from engine.kb.writer import BuildProgress, BuildReport

__all__ = [
    "BuildProgress",
    "BuildReport",
    "Chunk",
    "ChunkingConfig",
    "Hit",
    "HnswConfig",
    "KnowledgeBase",
    "KnowledgeBaseStats",
    "SearchResult",
    "SearchTimings",
    "SkippedFile",
]
