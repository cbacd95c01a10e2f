"""Resident memory of each part of the engine, measured in a fresh process so nothing else counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine._memory import resident_bytes


@dataclass(frozen=True)
class MemoryFootprint:
    """Resident memory (MB) each part added when loaded, and each mode's total."""

    base_model_mb: float
    adapter_mb: float
    retrieval_mb: float  # embedder session + HNSW index + chunk store
    rag_mode_mb: float
    baked_mode_mb: float

    @property
    def hybrid_mode_mb(self) -> float:
        """The base model, the adapter and retrieval."""
        return self.base_model_mb + self.adapter_mb + self.retrieval_mb

    def mode_mb(self, mode: str) -> float | None:
        """The total of ``mode`` (a spliced or reader variant counts as its mode); None for an unknown one."""
        base = mode.split("-")[0]
        return {"rag": self.rag_mode_mb, "baked": self.baked_mode_mb, "hybrid": self.hybrid_mode_mb}.get(base)


def resident_mb() -> float:
    """Resident set size of this process, in MB."""
    return resident_bytes() / 1e6


def memory_footprint(model: Path, adapter: Path, kb_dir: Path) -> MemoryFootprint:
    """Resident memory each part adds, measured in a fresh process so nothing else counts."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_memory, (str(model), str(adapter), str(kb_dir)))


def _measure_memory(model: str, adapter: str, kb_dir: str) -> MemoryFootprint:
    from engine.generation.generator import Generator
    from engine.kb import KnowledgeBase

    question = [("user", "What is the warranty period?")]
    start = resident_mb()
    generator = Generator(model, n_ctx=2048)
    generator.generate(question, max_tokens=4)
    base = resident_mb()
    generator.load_adapter(adapter, name="baked")
    generator.generate(question, max_tokens=4, adapters={"baked": 1.0})
    with_adapter = resident_mb()
    kb = KnowledgeBase.open(kb_dir)  # with the embedder it was built with
    kb.search("What is the warranty period?", k=4)
    with_retrieval = resident_mb()
    kb.close()
    base_mb, adapter_mb, retrieval_mb = base - start, with_adapter - base, with_retrieval - with_adapter
    return MemoryFootprint(base_mb, adapter_mb, retrieval_mb, base_mb + retrieval_mb, base_mb + adapter_mb)
