"""Functions run in child processes by test_knowledge_base.py (spawned, so importable here)."""

from __future__ import annotations

import os
from pathlib import Path

from engine.embedding.embedder import Embedder
from engine.kb.knowledge_base import KnowledgeBase
from engine.kb.locking import WriteLock


def search_sources(kb_dir: str, cache_dir: str, query: str) -> list[str]:
    """Open the knowledge base in this process and return the sources of the hits."""
    kb = KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir))
    return [Path(h.source).name for h in kb.search(query, 3).hits]


def hold_lock(kb_dir: str, locked, release) -> None:
    """Take the writer lock, say so, and hold it until told to release."""
    with WriteLock(Path(kb_dir)):
        locked.set()
        release.wait(60)


def crash_during_add(kb_dir: str, cache_dir: str, new_files: list[str]) -> None:
    """Start an add and die (no cleanup, like a kill) once the first file's chunks are written."""
    kb = KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir))

    def die(event) -> None:
        if event.chunks_done > 0:
            os._exit(17)

    kb.add(new_files, progress=die)
