"""Writing a new generation of a knowledge base, atomically.

A write (build, rebuild, add, remove) never touches the published generation. It
creates ``DIR/gen-NNNNNN/`` numbered after every folder there, copies the published
chunk store into it (or, for a build or rebuild, starts an empty one), applies the
changes, writes vectors and the HNSW graph, fsyncs every file and the folder, and
only then replaces ``DIR/manifest.json``. Until that replace the previous manifest
names the previous, intact generation: an exception (from the ``progress`` callback,
say) removes the new folder at once; a kill leaves it, and the next writer, under
the lock, removes it with any other folder newer than the published one. After
publishing, generations older than the previous one are deleted (the previous one
is kept so that a reader that has just read the old manifest can still open it);
the next writer finishes that too if a kill interrupted it.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine._files import fsync_dir
from engine.errors import InputError, KnowledgeBaseCorruptError, KnowledgeBaseError
from engine.kb import documents, index, manifest
from engine.kb.chunking import Chunk, ChunkingConfig, chunk_blocks
from engine.kb.documents import DocumentInfo, SkippedFile
from engine.kb.hnsw_file import HnswFile
from engine.kb.index import HnswConfig
from engine.kb.locking import LOCK_FILE
from engine.kb.manifest import DocumentRecord, Manifest
from engine.kb.store import ChunkStore

FILES = list(manifest.GENERATION_FILES)
EMBED_BATCH = 256


@dataclass(frozen=True)
class BuildProgress:
    """Progress of a build or add, passed to the ``progress`` callback.

    Attributes:
        files_done: documents finished so far.
        files_total: documents to process in this write.
        chunks_done: chunks embedded so far in this write.
        source: the document being processed (``""`` at the end).
    """

    files_done: int
    files_total: int
    chunks_done: int
    source: str


@dataclass(frozen=True)
class BuildReport:
    """What a build, add or remove did.

    Attributes:
        added: documents indexed for the first time.
        replaced: documents whose content changed and whose chunks were replaced.
        unchanged: documents already indexed with the same checksum (no-ops).
        removed: documents whose chunks were removed.
        skipped: files not indexed, with the reason (empty, binary, not UTF-8, duplicate...).
        chunks_added: chunks embedded and inserted.
        chunks_removed: chunks deleted.
        chunks_total: chunks in the knowledge base afterwards.
        generation: the generation folder now published.
        elapsed_s: wall time of the write, in seconds.
    """

    added: tuple[str, ...]
    replaced: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]
    chunks_added: int
    chunks_removed: int
    chunks_total: int
    generation: str
    elapsed_s: float


def generations(directory: Path) -> list[int]:
    """Numbers of the ``gen-NNNNNN`` folders in ``directory``, ascending."""
    out = []
    for child in directory.iterdir():
        if manifest.GENERATION_NAME.fullmatch(child.name) and child.is_dir():
            out.append(int(child.name[len("gen-"):]))
    return sorted(out)


def generation_name(number: int) -> str:
    """Folder name of generation ``number``."""
    return f"gen-{number:06d}"


def published(directory: Path) -> Manifest | None:
    """The manifest ``directory`` publishes, or None: no manifest, or one a rebuild replaces (unreadable)."""
    try:
        return manifest.read(directory)
    except KnowledgeBaseError:
        return None


def refuse_foreign(directory: Path) -> None:
    """Raise ``InputError`` unless ``directory`` holds only what a knowledge base holds (or nothing)."""
    allowed = {manifest.MANIFEST, LOCK_FILE, f".{manifest.MANIFEST}.tmp"}
    foreign = [c.name for c in directory.iterdir() if c.name not in allowed and not manifest.GENERATION_NAME.fullmatch(c.name)]
    if foreign:
        raise InputError(f"{directory} is not empty and is not a knowledge base (it holds {foreign[0]!r}): "
                         f"choose an empty or new folder")


def remove_unpublished(directory: Path, current: Manifest | None) -> None:
    """Delete generation folders newer than the published one (left by a killed writer).

    With no readable manifest every generation folder is unpublished, except when a
    manifest file exists that this engine cannot read: its folder cannot be told
    apart, so all are kept (``prune`` removes them once a new generation is published).
    """
    if current is None and (directory / manifest.MANIFEST).exists():
        return
    newest = int(current.generation[4:]) if current else -1
    for number in generations(directory):
        if number > newest:
            shutil.rmtree(directory / generation_name(number), ignore_errors=True)


def prune(directory: Path, current: Manifest) -> None:
    """Delete generations older than the one before ``current``."""
    keep_from = int(current.generation[4:]) - 1
    for number in generations(directory):
        if number < keep_from:
            shutil.rmtree(directory / generation_name(number), ignore_errors=True)


def embed_text(heading: str, text: str) -> str:
    """What the embedder sees for a chunk: its heading trail, then its text."""
    return f"{heading}\n{text}" if heading else text


def write_generation(
    directory: Path,
    previous: Manifest | None,
    embedder,
    chunking: ChunkingConfig,
    hnsw: HnswConfig,
    new_docs: Sequence[DocumentInfo],
    remove_sources: Sequence[str],
    progress: Callable[[BuildProgress], None] | None,
    *,
    rebuild: bool = False,
    if_empty: str | None = None,
) -> tuple[Manifest, int, int, list[SkippedFile], list[str]]:
    """Write and publish one generation (the caller holds the write lock).

    ``previous`` is the published manifest (``published(directory)``), ``None`` when
    there is none. The new generation starts from ``previous``'s chunks, or from none
    when ``rebuild`` (or ``previous`` is ``None``): ``previous`` then stays published
    until the new generation is complete. ``remove_sources`` are deleted first, then
    ``new_docs`` are chunked, embedded and inserted (their old chunks, if any, must be
    among ``remove_sources``). Any exception before publishing removes the new folder.

    Returns:
        ``(manifest, chunks_added, chunks_removed, skipped, indexed)``: ``skipped`` holds
        documents that produced no chunks; ``indexed`` the sources that were written.

    Raises:
        InputError: ``if_empty`` (its text) when given and no document gave a chunk; nothing is published.
    """
    remove_unpublished(directory, previous)
    if previous is not None:
        prune(directory, previous)  # what a writer killed before its prune finished left behind
    base = None if rebuild else previous
    folder = directory / generation_name((generations(directory) or [0])[-1] + 1)
    folder.mkdir()
    try:
        written = _ChunkWriter(folder, base, embedder, chunking, progress).write(remove_sources, new_docs)
        if if_empty is not None and not written.indexed:
            raise InputError(if_empty)
        new = _finish(directory, folder, base, embedder, chunking, hnsw, written)
        if progress:
            progress(BuildProgress(len(new_docs), len(new_docs), written.chunks_done, ""))
    except sqlite3.Error as error:  # SQLite's own type for a failed write (disk full, I/O error)
        shutil.rmtree(folder, ignore_errors=True)
        raise KnowledgeBaseError(f"writing the chunk store of {folder} failed ({error}): is the disk full? Nothing "
                                 f"was published, {directory} is as it was: free space and write again") from error
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    manifest.write(directory, new)
    prune(directory, new)
    return new, len(written.added_ids), len(written.removed_ids), written.skipped, written.indexed


class _ChunkWriter:
    """Writes the chunk store of a new generation: removals, then new documents chunked and embedded.

    After ``write``: ``records`` (the documents of the new generation), ``added_ids`` and
    ``added_vectors`` (the new chunks), ``removed_ids``, ``next_id`` (the first id a later
    write may use), ``chunks_done`` (embedded in this write), ``chunks_total`` (in the
    store), ``skipped`` (documents that gave no chunks) and ``indexed`` (documents written).
    """

    def __init__(self, folder: Path, base: Manifest | None, embedder, chunking: ChunkingConfig,
                 progress: Callable[[BuildProgress], None] | None) -> None:
        self.folder, self.base, self.embedder, self.chunking, self.progress = folder, base, embedder, chunking, progress
        self.next_id = base.next_chunk_id if base else 0
        self.records: dict[str, DocumentRecord] = dict(base.documents) if base else {}
        self.removed_ids: list[int] = []
        self.new_vectors: list[np.ndarray] = []
        self.new_ids: list[int] = []
        self.skipped: list[SkippedFile] = []
        self.indexed: list[str] = []
        self.chunks_done = self.chunks_total = self.files_total = 0

    def write(self, remove_sources: Sequence[str], new_docs: Sequence[DocumentInfo]) -> _ChunkWriter:
        """Write the store (closed afterwards, also on failure); returns ``self``."""
        path = self.folder / "chunks.sqlite"
        if self.base is None:
            self.store = ChunkStore.create(path)
        else:
            shutil.copyfile(self.folder.parent / self.base.generation / "chunks.sqlite", path)
            self.store = ChunkStore.open_writable(path)
        self.files_total = len(new_docs)
        try:
            self.store.begin()
            for source in remove_sources:
                self.removed_ids.extend(self.store.delete_source(source))
                self.records.pop(source, None)
            for file_index, doc in enumerate(new_docs):
                self._add(file_index, doc)
            if self.base is None:
                self.store.optimize()
            self.chunks_total = self.store.count()
            self.store.commit()
        finally:
            self.store.close()
        self.added_ids = np.asarray(self.new_ids, np.int64)
        self.added_vectors = (np.concatenate(self.new_vectors) if self.new_vectors
                              else np.empty((0, self.embedder.dim), np.float32))
        return self

    def _add(self, file_index: int, doc: DocumentInfo) -> None:
        self._report(file_index, doc.source)
        markdown = not doc.source.lower().endswith(".txt")
        batch: list[Chunk] = []
        count = 0
        for chunk in chunk_blocks(documents.iter_blocks(doc.source), self.embedder.token_offsets, self.chunking,
                                  markdown=markdown):
            batch.append(chunk)
            count += 1
            if len(batch) == EMBED_BATCH:
                self._flush(file_index, doc.source, batch)
        if batch:
            self._flush(file_index, doc.source, batch)
        if count == 0:
            self.skipped.append(SkippedFile(doc.source, "no text to index (only headings or whitespace)"))
            return
        self.records[doc.source] = DocumentRecord(doc.sha256, doc.size_bytes, count)
        self.indexed.append(doc.source)

    def _flush(self, file_index: int, source: str, batch: list[Chunk]) -> None:
        vectors = np.asarray(self.embedder.embed([embed_text(c.heading, c.text) for c in batch]), np.float32)
        ids = list(range(self.next_id, self.next_id + len(batch)))
        self.next_id += len(batch)
        self.store.insert(ids, source, ((c.start_char, c.end_char, c.heading, c.text) for c in batch))
        self.new_vectors.append(vectors)
        self.new_ids.extend(ids)
        self.chunks_done += len(batch)
        batch.clear()
        self._report(file_index, source)

    def _report(self, file_index: int, source: str) -> None:
        if self.progress:
            self.progress(BuildProgress(file_index, self.files_total, self.chunks_done, source))


def _finish(directory: Path, folder: Path, base: Manifest | None, embedder, chunking: ChunkingConfig,
            hnsw: HnswConfig, written: _ChunkWriter) -> Manifest:
    """Write vectors, ids and graph beside the chunk store, fsync them; the manifest to publish."""
    if base is None:
        old_vectors = np.empty((0, embedder.dim), np.float32)
        old_ids = np.empty(0, np.int64)
    else:
        old_vectors = np.load(directory / base.generation / "vectors.npy", mmap_mode="r")
        old_ids = np.load(directory / base.generation / "ids.npy")
    removed = np.asarray(written.removed_ids, np.int64)
    keep = ~np.isin(old_ids, removed)
    ids = np.concatenate([old_ids[keep], written.added_ids])
    vectors = np.concatenate([np.asarray(old_vectors[keep], np.float32), written.added_vectors])
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "ids.npy", ids)

    deleted_before = (base.graph_elements - base.chunks) if base else 0
    if base is None or deleted_before + len(removed) > REBUILD_AT * max(len(ids), 1):
        graph = index.build_graph(vectors, ids, hnsw)
        graph_elements = len(ids)
    else:
        graph = index.extend_graph(directory / base.generation / "index.hnsw", embedder.dim, base.graph_elements,
                                   removed, written.added_vectors, written.added_ids, hnsw)
        graph_elements = base.graph_elements + len(written.added_ids)
    graph.save_index(str(folder / "index.hnsw"))
    if written.chunks_total != len(ids):
        raise RuntimeError(f"chunk store holds {written.chunks_total} chunks but {len(ids)} vectors were written")
    _check_complete(folder, int(embedder.dim), graph_elements)

    files = manifest.record_files(folder, FILES)
    fsync_dir(folder)
    return Manifest(
        format_version=manifest.FORMAT_VERSION,
        generation=folder.name,
        embedder_model=embedder.model_id,
        embedder_variant=embedder.variant,
        dim=int(embedder.dim),
        chunk_tokens=chunking.chunk_tokens,
        overlap_tokens=chunking.overlap_tokens,
        hnsw_M=hnsw.M,
        hnsw_ef_construction=hnsw.ef_construction,
        hnsw_ef=hnsw.ef,
        chunks=written.chunks_total,
        graph_elements=graph_elements,
        next_chunk_id=written.next_id,
        documents=dict(sorted(written.records.items())),
        files=files,
    )


def _check_complete(folder: Path, dim: int, elements: int) -> None:
    """Raise ``KnowledgeBaseError`` unless the arrays and the graph were written whole.

    NumPy's ``np.save`` and hnswlib's ``save_index`` (an unchecked ``std::ofstream``) can
    return normally from a write the file system cut short (disk full, file size limit);
    published, such a file would leave the knowledge base unopenable.
    """
    try:
        index.check_array_headers(folder)
        HnswFile.read(folder / "index.hnsw", dim=dim, elements=elements)
    except KnowledgeBaseCorruptError as error:
        raise KnowledgeBaseError(f"a file of {folder} was written incomplete: is the disk full? Nothing was "
                                 f"published, the knowledge base is as it was: free space and write again") from error


REBUILD_AT = index.REBUILD_DELETED_FRACTION
