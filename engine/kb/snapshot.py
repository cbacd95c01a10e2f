"""One loaded generation of a knowledge base, and the swap that replaces it under running searches.

A ``Snapshot`` (one generation of the knowledge base) holds everything a search reads from one immutable ``gen-NNNNNN``
folder: its manifest, chunk store, chunk ids, vectors and HNSW graph. ``LiveSnapshot``
is the one a ``KnowledgeBase`` object searches, and the discipline that makes a
swap safe while other threads search:

- a new generation is loaded completely (files checked, store opened, graph read)
  before anything is swapped, so a failed load leaves the object as it was;
- searches hold the read side of a readers–writer lock for as long as they use the
  generation, any number of them at once; the swap takes the write side only to
  replace one reference, so it waits for the searches already running and holds
  new ones back for that assignment alone;
- the old generation is closed after the write side is released, when no search
  can hold it any more.

A search therefore sees one generation from start to end: never one generation's
graph with another's store, never a closed SQLite connection. The live objects are
never changed in place: a write builds its graph from the files of a new folder
(``engine/kb/writer.py``), which matters because hnswlib does not allow a search
while items are added to or deleted from the same graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from engine.errors import KnowledgeBaseCorruptError, KnowledgeBaseError
from engine.kb import index, manifest
from engine.kb.manifest import Manifest
from engine.kb.rwlock import ReadersWriterLock
from engine.kb.store import REBUILD_HINT, ChunkStore


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The searchable contents of one generation folder (see the module docstring).

    Attributes:
        manifest: the manifest that published it.
        store: its chunk store, read-only.
        ids: int64 chunk ids, ascending, one per row of ``vectors``.
        vectors: float32 ``(chunks, dim)`` memmap of unit vectors.
        graph: the HNSW graph over the vectors, labelled with the chunk ids.
    """

    manifest: Manifest
    store: ChunkStore
    ids: np.ndarray
    vectors: np.ndarray
    graph: hnswlib.Index

    @classmethod
    def load(cls, directory: Path, current: Manifest, verify: str) -> Snapshot:
        """Check and open the generation ``current`` names; ``verify`` is ``manifest.verify_files``'s.

        Raises:
            KnowledgeBaseCorruptError: a file is missing, truncated, fails its checksum or
                disagrees with the manifest.
        """
        folder = directory / current.generation
        manifest.verify_files(folder, current.files, verify)
        store = ChunkStore.open_readonly(folder / "chunks.sqlite")
        try:
            try:
                ids = np.load(folder / "ids.npy")
                vectors = np.load(folder / "vectors.npy", mmap_mode="r")
            except (ValueError, OSError, EOFError) as error:
                raise KnowledgeBaseCorruptError(f"{folder}: unreadable vectors ({error}): {REBUILD_HINT}") from None
            if len(ids) != current.chunks or vectors.shape != (current.chunks, current.dim):
                raise KnowledgeBaseCorruptError(f"{folder}: vectors disagree with the manifest: {REBUILD_HINT}")
            hnsw = index.HnswConfig(current.hnsw_M, current.hnsw_ef_construction, current.hnsw_ef)
            graph = index.load_graph(folder / "index.hnsw", current.dim, current.graph_elements, current.hnsw_ef,
                                     config=hnsw)
        except BaseException:
            store.close()
            raise
        return cls(current, store, ids, vectors, graph)

    @property
    def number(self) -> int:
        """The generation's number (``gen-000042`` is 42); later writes have larger numbers."""
        return int(self.manifest.generation[4:])

    def close(self) -> None:
        """Close the chunk store; the arrays and the graph go with the last reference."""
        self.store.close()


class LiveSnapshot:
    """The generation a ``KnowledgeBase`` searches, swapped safely under running searches.

    Args:
        first: the generation to start with (already loaded).
        name: the knowledge base folder, for messages.
    """

    def __init__(self, first: Snapshot, name: Path) -> None:
        self._current: Snapshot | None = first
        self._latest = first.manifest
        self._name = name
        self._lock = ReadersWriterLock()

    @property
    def manifest(self) -> Manifest:
        """The manifest of the generation searched now (the last one, once closed)."""
        return self._latest

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._current is None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Snapshot]:
        """Hold the current generation for the block: no swap can close it meanwhile.

        Raises:
            KnowledgeBaseError: the knowledge base object was closed.
        """
        with self._lock.read():
            current = self._current
            if current is None:
                raise KnowledgeBaseError(f"the knowledge base {self._name} was closed: open it again with "
                                         f"KnowledgeBase.open to search it")
            yield current

    def replace(self, new: Snapshot) -> None:
        """Search ``new`` from now on and close the one it replaces.

        A generation older than the current one (two writers of this object finishing out
        of order), or one arriving after ``close``, is closed instead of swapped in.
        """
        with self._lock.write():
            old = self._current
            if old is not None and new.number > old.number:
                self._current, self._latest = new, new.manifest
            else:
                old = new
        old.close()  # outside the write side: no search holds it any more

    def close(self) -> None:
        """Close the current generation once running searches have finished (idempotent)."""
        with self._lock.write():
            old, self._current = self._current, None
        if old is not None:
            old.close()
