"""Writing a new generation of a knowledge base, atomically.

A write (build, add, remove) never touches the published generation. It creates
``DIR/gen-NNNNNN/``, copies the previous chunk store into it (or starts an empty
one), applies the changes, writes vectors and the HNSW graph, fsyncs every file
and the folder, and only then replaces ``DIR/manifest.json``. A crash at any point
before that replace leaves the previous manifest naming the previous, intact
generation; the unpublished folder is removed by the next writer. After
publishing, generations older than the previous one are deleted (the previous one
is kept so that a reader that has just read the old manifest can still open it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine._files import fsync_dir
from engine.kb import documents, index, manifest
from engine.kb.chunking import Chunk, ChunkingConfig, chunk_blocks
from engine.kb.documents import DocumentInfo, SkippedFile
from engine.kb.index import HnswConfig
from engine.kb.manifest import DocumentRecord, Manifest
from engine.kb.store import ChunkStore

GENERATION = re.compile(r"^gen-(\d{6})$")
FILES = ["chunks.sqlite", "vectors.npy", "ids.npy", "index.hnsw"]
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
        match = GENERATION.match(child.name)
        if match and child.is_dir():
            out.append(int(match.group(1)))
    return sorted(out)


def generation_name(number: int) -> str:
    """Folder name of generation ``number``."""
    return f"gen-{number:06d}"


def remove_unpublished(directory: Path, current: Manifest | None) -> None:
    """Delete generation folders newer than the published one (left by a crashed writer)."""
    published = int(current.generation[4:]) if current else -1
    for number in generations(directory):
        if number > published:
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
) -> tuple[Manifest, int, int, list[SkippedFile], list[str]]:
    """Write and publish one generation (the caller holds the write lock).

    ``previous`` is ``None`` for a fresh build. ``remove_sources`` are deleted first,
    then ``new_docs`` are chunked, embedded and inserted (their old chunks, if any,
    must be among ``remove_sources``).

    Returns:
        ``(manifest, chunks_added, chunks_removed, skipped, indexed)``: ``skipped`` holds
        documents that produced no chunks; ``indexed`` the sources that were written.
    """
    remove_unpublished(directory, previous)
    number = (generations(directory) or [0])[-1] + 1
    folder = directory / generation_name(number)
    folder.mkdir()
    if previous is None:
        store = ChunkStore.create(folder / "chunks.sqlite")
        old_vectors = np.empty((0, embedder.dim), np.float32)
        old_ids = np.empty(0, np.int64)
        next_id = 0
        docs_records: dict[str, DocumentRecord] = {}
    else:
        old_folder = directory / previous.generation
        shutil.copyfile(old_folder / "chunks.sqlite", folder / "chunks.sqlite")
        store = ChunkStore.open_writable(folder / "chunks.sqlite")
        old_vectors = np.load(old_folder / "vectors.npy", mmap_mode="r")
        old_ids = np.load(old_folder / "ids.npy")
        next_id = previous.next_chunk_id
        docs_records = dict(previous.documents)

    store.begin()
    removed_ids: list[int] = []
    for source in remove_sources:
        removed_ids.extend(store.delete_source(source))
        docs_records.pop(source, None)

    new_vectors: list[np.ndarray] = []
    new_ids: list[int] = []
    skipped: list[SkippedFile] = []
    indexed: list[str] = []
    chunks_done = 0
    for file_index, doc in enumerate(new_docs):
        if progress:
            progress(BuildProgress(file_index, len(new_docs), chunks_done, doc.source))
        markdown = not doc.source.lower().endswith(".txt")
        batch: list[Chunk] = []
        count = 0

        def flush() -> None:
            nonlocal next_id, chunks_done
            vectors = np.asarray(embedder.embed([embed_text(c.heading, c.text) for c in batch]), np.float32)
            ids = list(range(next_id, next_id + len(batch)))
            next_id += len(batch)
            store.insert(ids, doc.source, ((c.start_char, c.end_char, c.heading, c.text) for c in batch))
            new_vectors.append(vectors)
            new_ids.extend(ids)
            chunks_done += len(batch)
            batch.clear()
            if progress:
                progress(BuildProgress(file_index, len(new_docs), chunks_done, doc.source))

        for chunk in chunk_blocks(documents.iter_blocks(doc.source), embedder.token_offsets, chunking,
                                  markdown=markdown):
            batch.append(chunk)
            count += 1
            if len(batch) == EMBED_BATCH:
                flush()
        if batch:
            flush()
        if count == 0:
            skipped.append(SkippedFile(doc.source, "no text to index (only headings or whitespace)"))
            continue
        docs_records[doc.source] = DocumentRecord(doc.sha256, doc.size_bytes, count)
        indexed.append(doc.source)
    if previous is None:
        store.optimize()
    chunk_count = store.count()
    store.commit()
    store.close()

    keep = ~np.isin(old_ids, np.asarray(removed_ids, np.int64))
    added_ids = np.asarray(new_ids, np.int64)
    added_vectors = np.concatenate(new_vectors) if new_vectors else np.empty((0, embedder.dim), np.float32)
    ids = np.concatenate([old_ids[keep], added_ids])
    vectors = np.concatenate([np.asarray(old_vectors[keep], np.float32), added_vectors])
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "ids.npy", ids)

    deleted_before = (previous.graph_elements - previous.chunks) if previous else 0
    if previous is None or deleted_before + len(removed_ids) > REBUILD_AT * max(len(ids), 1):
        graph = index.build_graph(vectors, ids, hnsw)
        graph_elements = len(ids)
    else:
        graph = index.extend_graph(directory / previous.generation / "index.hnsw", embedder.dim,
                                   previous.graph_elements, np.asarray(removed_ids, np.int64),
                                   added_vectors, added_ids, hnsw)
        graph_elements = previous.graph_elements + len(added_ids)
    graph.save_index(str(folder / "index.hnsw"))

    files = manifest.record_files(folder, FILES)
    fsync_dir(folder)
    new = Manifest(
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
        chunks=chunk_count,
        graph_elements=graph_elements,
        next_chunk_id=next_id,
        documents=dict(sorted(docs_records.items())),
        files=files,
    )
    if chunk_count != len(ids):
        raise RuntimeError(f"chunk store holds {chunk_count} chunks but {len(ids)} vectors were written")
    manifest.write(directory, new)
    if progress:
        progress(BuildProgress(len(new_docs), len(new_docs), chunks_done, ""))
    prune(directory, new)
    return new, len(added_ids), len(removed_ids), skipped, indexed


REBUILD_AT = index.REBUILD_DELETED_FRACTION
