"""bakeoff's inference engine: local generation (llama.cpp) and local retrieval.

The public surface is small: ``Engine`` (ask in "rag" or "baked" mode) and its
``Answer``/``AnswerStream``, ``Generator`` (GGUF generation with LoRA adapters) with its
``GeneratorConfig``/``SamplingConfig`` and ``TextStream``, ``Embedder`` (ONNX Runtime sentence embeddings), ``KnowledgeBase`` (HNSW + SQLite
FTS5 retrieval with Numba scoring), their result types, ``hardware()``, the
``models`` cache and the ``errors`` hierarchy. ``ChunkKvCache`` keeps the precomputed
chunk states ``Engine(kv_cache=...)`` splices into RAG prompts (``Splice`` at the
``Generator`` level).

Heavy modules (ONNX Runtime, Numba, the native core) are imported on first use,
so ``import engine`` and the CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import errors, models
from engine._lazy import lazy_exports

from engine._version import __version__  # noqa: E402  (one place for the version)

# Public name -> module that defines it; resolved lazily by __getattr__.
_LAZY = {
    "Engine": "engine.facade",
    "AnswerStream": "engine.facade",
    "Answer": "engine.answer",
    "AnswerTimings": "engine.answer",
    "Citation": "engine.answer",
    "Mode": "engine.answer",
    "StopReason": "engine.answer",
    "SpliceMode": "engine.answer.types",
    "ChunkKvCache": "engine.generation.kv_cache",
    "KvCacheStats": "engine.generation.kv_cache",
    "Splice": "engine.generation.splice",
    "Generator": "engine.generation.generator",
    "GeneratorConfig": "engine.generation.types",
    "SamplingConfig": "engine.generation.types",
    "Generation": "engine.generation.types",
    "GenerationTimings": "engine.generation.types",
    "ModelInfo": "engine.generation.types",
    "TextStream": "engine.generation.stream",
    "Embedder": "engine.embedding.embedder",
    "KnowledgeBase": "engine.kb",
    "ChunkingConfig": "engine.kb",
    "HnswConfig": "engine.kb",
    "BuildReport": "engine.kb",
    "Hit": "engine.kb",
    "SearchResult": "engine.kb",
    "SearchTimings": "engine.kb",
    "hardware": "engine.hardware",
}

__all__ = sorted([*_LAZY, "errors", "models", "__version__"])

if TYPE_CHECKING:
    from engine.answer import Answer, AnswerTimings, Citation, Mode, StopReason
    from engine.answer.types import SpliceMode
    from engine.embedding.embedder import Embedder
    from engine.facade import AnswerStream, Engine
    from engine.generation.generator import Generator
    from engine.generation.kv_cache import ChunkKvCache, KvCacheStats
    from engine.generation.splice import Splice
    from engine.generation.stream import TextStream
    from engine.generation.types import Generation, GenerationTimings, GeneratorConfig, ModelInfo, SamplingConfig
    from engine.hardware import hardware
    from engine.kb import BuildReport, ChunkingConfig, Hit, HnswConfig, KnowledgeBase, SearchResult, SearchTimings


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
