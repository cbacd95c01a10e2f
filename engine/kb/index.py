"""The dense index: hnswlib HNSW over L2-normalised vectors, inner-product space.

Alongside ``index.hnsw`` each generation keeps ``vectors.npy`` (float32, one row per
live chunk) and ``ids.npy`` (int64 chunk ids, ascending, aligned with the rows). The
scoring stage reads candidate vectors from that memmap for MMR; writers rebuild or
extend the graph from it. Ids removed from the graph are marked deleted; once a
quarter of the graph is deleted, the next write rebuilds it from the live vectors.

hnswlib trusts the files it loads, so ``load_graph`` and ``extend_graph`` check them
first (``engine/kb/hnsw_file.py`` for the graph, ``_check_arrays`` for the arrays):
a damaged file is ``KnowledgeBaseCorruptError``, never a crash or different hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from engine.errors import InputError, KnowledgeBaseCorruptError
from engine.kb.hnsw_file import HnswFile
from engine.kb.store import REBUILD_HINT
from engine.shutdown import NATIVE

REBUILD_DELETED_FRACTION = 0.25
#: Graphs of more elements than this search with a larger ef (``scaled_ef``).
EF_SCALE_FROM = 100_000
_BLOCK_ROWS = 8192  # rows compared at a time (12 MiB at 384 dims): bounded memory, vectorised
#: The arrays of a generation: file name -> (dtype, number of dimensions).
ARRAYS: dict[str, tuple[np.dtype, int]] = {"ids.npy": (np.dtype("<i8"), 1), "vectors.npy": (np.dtype("<f4"), 2)}


@dataclass(frozen=True)
class HnswConfig:
    """HNSW parameters. Defaults reach recall@10 >= 0.98 at 100k 384-d embedding-like vectors.

    Tuned in bench/bench_index.py on synthetic data calibrated against real MiniLM
    embeddings (clustered, participation ratio ~60 of 384 dims): ef=24 gives recall@10
    0.99-0.996 at 100k; ef=16 is at the edge (~0.98). Searches for ``k`` > ``ef`` (the knowledge
    base asks for 64 candidates) use ``ef = k``; graphs beyond 100k elements search with
    ``scaled_ef`` (96 at 1M, where ef=24 reaches only 0.85). Isotropic random vectors, the worst
    case, get recall@10 0.03 at ef=24 and 0.35 even at ef=400 (the benchmark reports it).

    Attributes:
        M: graph out-degree (memory ~ 2*M*4 bytes per vector; higher = better recall).
        ef_construction: candidate list size while building (build time vs graph quality).
        ef: candidate list size while searching (latency vs recall); raised to k when smaller.
    """

    M: int = 16
    ef_construction: int = 200
    ef: int = 24

    def validate(self) -> None:
        """Raise ``InputError`` unless every parameter is in hnswlib's useful range."""
        if not 2 <= self.M <= 128:
            raise InputError(f"hnsw M={self.M} must be between 2 and 128 (16 is a good default)")
        if self.ef_construction < self.M:
            raise InputError(f"hnsw ef_construction={self.ef_construction} must be at least M={self.M}")
        if self.ef < 1:
            raise InputError(f"hnsw ef={self.ef} must be at least 1")


def build_graph(vectors: np.ndarray, ids: np.ndarray, config: HnswConfig, *, threads: int = -1) -> hnswlib.Index:
    """A new HNSW graph over ``vectors`` labelled with ``ids``."""
    dim = vectors.shape[1]
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(max_elements=max(len(ids), 1), M=config.M, ef_construction=config.ef_construction,
                     random_seed=100)
    if len(ids):
        graph.add_items(vectors, ids, num_threads=threads)
    graph.set_ef(config.ef)
    return graph


def extend_graph(path: Path, dim: int, total_before: int, removed: np.ndarray, vectors: np.ndarray,
                 ids: np.ndarray, config: HnswConfig, *, threads: int = -1) -> hnswlib.Index:
    """Load a published graph, mark ``removed`` ids deleted, add new ``vectors``.

    Raises:
        KnowledgeBaseCorruptError: the published graph is damaged (``HnswFile.read``).
    """
    _check_config(path, HnswFile.read(path, dim=dim, elements=total_before), config)
    graph = hnswlib.Index(space="ip", dim=dim)
    graph.load_index(str(path), max_elements=total_before + len(ids) + 1)
    for label in removed:
        graph.mark_deleted(int(label))
    if len(ids):
        graph.add_items(vectors, ids, num_threads=threads)
    graph.set_ef(config.ef)
    return graph


def load_graph(path: Path, dim: int, expected_elements: int, ef: int, *,
               config: HnswConfig | None = None) -> hnswlib.Index:
    """Check a published graph and the arrays beside it, then load the graph for searching.

    The checks run on every open, whatever ``verify`` says, before hnswlib reads the
    file (it trusts its input: a damaged link crashes the process in ``knn_query``):
    the file's structure (``HnswFile.read``), then ``ids.npy`` and ``vectors.npy`` in
    the same folder against the graph: dtypes and shapes, ids ascending and equal to
    the labels of the graph's live elements, vectors finite and bit for bit the ones
    the graph holds. 120-150 ms for 100k vectors of 384 dims on one core (hnswlib's own
    load takes 250-330 ms); a small knowledge base pays a few milliseconds.

    Args:
        path: ``gen-NNNNNN/index.hnsw``.
        dim: vector dimension the manifest records.
        expected_elements: elements in the graph (live and deleted) the manifest records.
        ef: search candidate list size.
        config: the manifest's HNSW parameters; when given, the file's M and
            ef_construction must match them.

    Raises:
        KnowledgeBaseCorruptError: naming the file and what is wrong in it.
    """
    checked = HnswFile.read(path, dim=dim, elements=expected_elements)
    if config is not None:
        _check_config(path, checked, config)
    _check_arrays(path.parent, checked, dim)
    graph = hnswlib.Index(space="ip", dim=dim)
    try:
        graph.load_index(str(path))
    except (RuntimeError, MemoryError, ValueError) as error:
        raise KnowledgeBaseCorruptError(f"{path} is not a readable HNSW index ({error}): {REBUILD_HINT}") from None
    if graph.element_count != expected_elements:
        raise KnowledgeBaseCorruptError(
            f"{path} holds {graph.element_count} vectors, the manifest says {expected_elements}: {REBUILD_HINT}")
    graph.set_ef(ef)
    graph.set_num_threads(1)
    return graph


def _check_config(path: Path, checked: HnswFile, config: HnswConfig) -> None:
    """The graph file's M and ef_construction against the manifest's (hnswlib raises ef_construction to M)."""
    if (checked.M, checked.ef_construction) != (config.M, max(config.ef_construction, config.M)):
        raise KnowledgeBaseCorruptError(
            f"{path} was built with M={checked.M}, ef_construction={checked.ef_construction}, the manifest says "
            f"M={config.M}, ef_construction={config.ef_construction}: {REBUILD_HINT}")


def _check_arrays(folder: Path, graph: HnswFile, dim: int) -> None:
    """``ids.npy`` and ``vectors.npy`` against the checked graph file (see ``load_graph``)."""
    check_array_headers(folder)
    live = np.flatnonzero(~graph.deleted)
    ids = _load_npy(folder / "ids.npy", (len(live),), "chunk ids")
    vectors = _load_npy(folder / "vectors.npy", (len(live), dim), "vectors")
    if len(ids) and (ids[0] < 0 or np.any(ids[1:] <= ids[:-1])):
        raise KnowledgeBaseCorruptError(f"{folder / 'ids.npy'}: chunk ids are not ascending: {REBUILD_HINT}")
    labels = graph.labels[live]
    order = np.argsort(labels, kind="stable")
    if not np.array_equal(labels[order], ids.astype(np.uint64)):
        raise KnowledgeBaseCorruptError(f"{folder / 'ids.npy'}: chunk ids differ from the labels in index.hnsw: "
                                        f"{REBUILD_HINT}")
    rows = live[order]
    for start in range(0, len(rows), _BLOCK_ROWS):
        block = np.asarray(vectors[start:start + _BLOCK_ROWS])
        if not np.isfinite(block).all():
            row = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise KnowledgeBaseCorruptError(f"{folder / 'vectors.npy'}: row {row} holds NaN or infinity: "
                                            f"{REBUILD_HINT}")
        if not np.array_equal(block.view(np.uint32), graph.data[rows[start:start + _BLOCK_ROWS]].view(np.uint32)):
            raise KnowledgeBaseCorruptError(f"{folder / 'vectors.npy'}: vectors differ from those in index.hnsw "
                                            f"(one of the two is damaged): {REBUILD_HINT}")


def check_array_headers(folder: Path) -> None:
    """The ``.npy`` headers of ``ids.npy`` and ``vectors.npy`` parse, say the right dtype, number
    of dimensions and C order, and match the files' lengths, so that ``np.load`` of them can
    neither fail with an unexpected error nor map more than the file. Microseconds.

    Raises:
        KnowledgeBaseCorruptError: naming the file and what its header says.
    """
    for name, (dtype, ndim) in ARRAYS.items():
        shape, fortran, found, data_start = _read_npy_header(folder / name)
        if found != dtype or len(shape) != ndim or fortran:
            order = " (Fortran order)" if fortran else ""
            raise KnowledgeBaseCorruptError(f"{folder / name} holds an array of dtype {found}, shape {shape}{order}; "
                                            f"it must be {dtype}, {ndim}-dimensional, C order: {REBUILD_HINT}")
        if (folder / name).stat().st_size != data_start + math.prod(shape) * dtype.itemsize:
            raise KnowledgeBaseCorruptError(f"{folder / name} is not as long as its header says: {REBUILD_HINT}")


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, offset of the data)`` from a ``.npy`` header."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            return tuple(shape), bool(fortran), dtype, handle.tell()
    except Exception as error:  # numpy's header parser also raises SyntaxError and tokenize.TokenError
        raise KnowledgeBaseCorruptError(f"{path} has no readable .npy header ({type(error).__name__}: "
                                        f"{str(error)[:80]}): {REBUILD_HINT}") from None


def _load_npy(path: Path, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A ``.npy`` file that ``check_array_headers`` accepted, whose shape must be ``shape``."""
    found = _read_npy_header(path)[0]
    if found != shape:
        raise KnowledgeBaseCorruptError(f"{path} holds {what} of shape {found}; index.hnsw needs {shape}: "
                                        f"{REBUILD_HINT}")
    return np.load(path, mmap_mode="r")


def scaled_ef(ef: int, elements: int) -> int:
    """The search ef for a graph of ``elements``: ``ef`` up to ``EF_SCALE_FROM``, then
    ``ef * (elements / EF_SCALE_FROM) ** 0.6`` (96 for ef 24 at 1M elements).

    At a fixed ef, HNSW's recall falls as the graph grows: on bench_scale.py's embedding-like
    vectors ef 24 gives recall@10 0.9985 at 100k but 0.85 at 1M, where ef 64 gives 0.95 and
    ef 96 gives 0.97 at 0.42 ms p50. The exponent is fitted to those two sizes only.
    """
    if elements <= EF_SCALE_FROM:
        return ef
    return math.ceil(ef * (elements / EF_SCALE_FROM) ** 0.6)


def search_graph(graph: hnswlib.Index, query: np.ndarray, k: int, live: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (at most ``live``) ids and inner products for one query, best first.

    ``ef`` is the configured one; large graphs search with ``scaled_ef`` of it.

    hnswlib refuses to return fewer than ``k`` neighbours. When many elements are marked
    deleted (or part of the graph is unreachable from its entry point) it can find fewer,
    so the search is retried with ``ef`` four times larger, then exhaustive, and then
    returns as many neighbours as the exhaustive search reaches (halving ``k``).
    """
    k = min(k, live)
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    ef = scaled_ef(ef, graph.element_count)
    for search_ef in (max(ef, k), max(ef, k) * 4, max(graph.element_count, k)):
        if (found := _knn(graph, query, k, search_ef)) is not None:
            return found
    while k > 1:
        k //= 2
        if (found := _knn(graph, query, k, max(graph.element_count, k))) is not None:
            return found
    return np.empty(0, np.int64), np.empty(0, np.float32)


def _knn(graph: hnswlib.Index, query: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray] | None:
    graph.set_ef(ef)
    try:
        with NATIVE.call():  # hnswlib releases the GIL: the process's exit waits for this call
            labels, distances = graph.knn_query(query.reshape(1, -1), k=k)
    except RuntimeError:  # "Cannot return the results in a contiguous 2D array": fewer than k found
        return None
    # hnswlib's "ip" distance is 1 - <q, v>.
    return labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)


def exact_search(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` by inner product (the ground truth for recall)."""
    scores = vectors @ query
    k = min(k, len(ids))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return ids[top], scores[top]
