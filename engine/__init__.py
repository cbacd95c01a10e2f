"""bakeoff's inference engine: local generation (llama.cpp) and local retrieval.

The public surface is small: ``Engine`` (ask in "rag" or "baked" mode), ``Generator`` (GGUF generation with LoRA adapters),
``Embedder`` (ONNX Runtime sentence embeddings), ``KnowledgeBase`` (HNSW + SQLite
FTS5 retrieval with Numba scoring), their result types, ``hardware()``, the
``models`` cache and the ``errors`` hierarchy.

Heavy modules (ONNX Runtime, Numba, the native core) are imported on first use,
so ``import engine`` and the CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import errors, models
from engine._lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> module that defines it; resolved lazily by __getattr__.
_LAZY = {
    "Engine": "engine.facade",
    "Answer": "engine.facade",
    "AnswerTimings": "engine.facade",
    "Citation": "engine.facade",
    "Generator": "engine.generator",
    "Generation": "engine.generator",
    "GenerationTimings": "engine.generator",
    "ModelInfo": "engine.generator",
    "Embedder": "engine.embedder",
    "KnowledgeBase": "engine.kb",
    "Hit": "engine.kb",
    "SearchResult": "engine.kb",
    "SearchTimings": "engine.kb",
    "hardware": "engine.hardware",
}

__all__ = sorted([*_LAZY, "errors", "models", "__version__"])

if TYPE_CHECKING:
    from engine.facade import Answer, AnswerTimings, Citation, Engine
    from engine.embedder import Embedder
    from engine.generator import Generation, GenerationTimings, Generator, ModelInfo
    from engine.hardware import hardware
    from engine.kb import Hit, KnowledgeBase, SearchResult, SearchTimings


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
