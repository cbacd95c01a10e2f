"""``KnowledgeBase``: build, open, update and search a folder of embedded chunks.

Layout of a knowledge base folder ``DIR``::

    DIR/manifest.json          what is published (engine/kb/manifest.py)
    DIR/.lock                  the writer lock (engine/kb/locking.py)
    DIR/gen-NNNNNN/            one immutable generation (engine/kb/writer.py)
        chunks.sqlite          chunk text, source, span, heading + FTS5 (engine/kb/store.py)
        vectors.npy, ids.npy   float32 embeddings and their chunk ids
        index.hnsw             hnswlib graph, inner product (engine/kb/index.py)

Decisions a user can notice:

- Writers (``build``, ``add``, ``remove``) hold ``DIR/.lock``; a second writer gets
  ``KnowledgeBaseLockedError`` at once, or waits up to ``lock_timeout_s``. Readers take
  no lock and keep reading the generation they opened while a writer publishes a new one.
- Every write is atomic, a rebuild over an existing knowledge base too: the published
  generation stays published, and searchable, until the new one is complete; a failed,
  interrupted or killed write leaves it as it was (``engine/kb/writer.py``).
- One object may be searched from many threads at once, also while one of them adds or
  removes documents: each search sees the generation before the write or the one after,
  whole (``engine/kb/generation.py``).
- ``open`` checks sizes and the structure of the index and arrays on every open
  (``engine/kb/hnsw_file.py``: header against the manifest, link bounds), so a damaged
  file is ``KnowledgeBaseCorruptError``, never a crash; with ``verify="auto"`` (default)
  also each file's sha256, cached in ``gen-NNNNNN/.verified.json`` so an unchanged file
  is hashed once; ``"full"`` always hashes, ``"size"`` never.
- A document is known by its absolute path. Re-adding it unchanged (same sha256) is a
  no-op; changed, its chunks are replaced. Documents are content-addressed: a file
  whose content is already indexed under another path is skipped and reported as a
  duplicate, so the same text never fills two of the ``k`` hits.
- Unusable files (empty, binary, not UTF-8, wrong suffix) are skipped and listed in
  ``BuildReport.skipped``; ``strict=True`` raises ``DocumentError`` instead. A build
  with no usable document raises ``InputError``.
- A file larger than ``max_document_mb`` (default 8 MiB, ``documents.MAX_DOCUMENT_MB``)
  is skipped the same way, by its size, before it is read: embedding runs at tens to
  hundreds of chunks per second on a CPU, so an 8 MB file (~10k chunks) costs minutes
  and a 50 MB one hours. The reason in ``BuildReport.skipped`` names the value of
  ``max_document_mb`` that would admit it.
- A knowledge base opened with another embedder model or dimension raises
  ``KnowledgeBaseMismatchError``; another variant of the same model (fp32 vs int8) is
  accepted, since their vectors agree to within rounding.
- Queries of an fp32-built knowledge base are embedded with the model's int8-full graph unless
  ``query_variant="fp32"``, and a repeated query is not embedded again (an LRU of
  ``query_cache_size`` vectors); why, with the measurements: ``engine/kb/query_cache.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ChunkingMismatchError, InputError, KnowledgeBaseCorruptError, KnowledgeBaseError
from engine.kb import documents as _documents
from engine.kb import manifest, scoring, selection, writer
from engine.kb.arguments import PathsLike, check_limit, check_search, describe
from engine.kb.chunking import ChunkingConfig
from engine.kb.documents import SkippedFile
from engine.kb.embedder_choice import check_embedder, default_embedder, recorded_embedder, truncate_query
from engine.kb.index import HnswConfig
from engine.kb.locking import WriteLock
from engine.kb.manifest import Manifest
from engine.kb.query_cache import QUERY_CACHE_SIZE, QueryCache, query_embedder
from engine.kb.ranking import K_RRF, MMR_LAMBDA, W_DENSE, W_LEXICAL, lexical_weight, rank
from engine.kb.results import Hit, KnowledgeBaseStats, SearchResult, SearchTimings
from engine.kb.snapshot import LiveSnapshot, Snapshot
from engine.kb.writer import BuildProgress, BuildReport

Progress = Callable[[BuildProgress], None]
class KnowledgeBase:
    """A searchable, persistent set of chunks. Create with ``build``; reopen with ``open``."""

    def __init__(self, directory: Path, embedder, current: Manifest, *, verify: str, warm_up_s: float,
                 lock_timeout_s: float, query_variant: str = "auto", query_cache_size: int = QUERY_CACHE_SIZE) -> None:
        self.path = directory
        self.embedder = embedder  # documents are embedded with it (the model and variant the manifest records)
        self.query_embedder = query_embedder(embedder, current.embedder_variant, query_variant)
        self._queries = QueryCache(self.query_embedder.embed_query, query_cache_size)
        self.lock_timeout_s = lock_timeout_s
        self.build_report: BuildReport | None = None
        self._verify = verify
        self._warm_up_s = warm_up_s
        self._live = LiveSnapshot(Snapshot.load(directory, current, verify), directory)

    @property
    def manifest(self) -> Manifest:
        """The manifest of the generation this object searches."""
        return self._live.manifest

    # ------------------------------------------------------------------ opening

    @classmethod
    def build(cls, documents: PathsLike, into: str | os.PathLike[str] | None = None, *, embedder=None,
              chunk_tokens: int = 200, overlap_tokens: int = 40, hnsw: HnswConfig = HnswConfig(),
              progress: Progress | None = None, strict: bool = False, lock_timeout_s: float = 0.0,
              max_document_mb: float = _documents.MAX_DOCUMENT_MB, query_variant: str = "auto") -> KnowledgeBase:
        """Build a knowledge base in the folder ``into`` from ``documents``, replacing what it held.

        Example: ``KnowledgeBase.build("docs/", into="kb")``.

        Args:
            documents: what to index: a ``.txt``/``.md`` file, a folder (recursive), a glob,
                or a list of them.
            into: the knowledge base folder; created if missing. An existing knowledge base
                there is replaced atomically: it stays published until the new one is complete,
                and a failed or killed build leaves it as it was. A non-empty folder that is
                not a knowledge base is refused.
            embedder: an ``engine.embedding.embedder.Embedder``; None uses the default one
                (all-MiniLM-L6-v2, fp32, from the model cache).
            chunk_tokens: most tokens per chunk (at most the embedder's ``max_tokens - 2``).
            overlap_tokens: most tokens shared by consecutive chunks.
            hnsw: graph parameters (``HnswConfig``).
            progress: called with a ``BuildProgress`` as documents and chunk batches finish.
            strict: raise ``DocumentError`` for an unusable file instead of skipping it.
            lock_timeout_s: seconds to wait for another writer before ``KnowledgeBaseLockedError``.
            max_document_mb: largest document indexed, in MiB; larger files are skipped
                (reported in ``build_report.skipped``) or, with ``strict``, raise ``DocumentError``.
            query_variant: how the returned object embeds queries, as :meth:`open` takes it.

        Returns:
            The opened knowledge base; ``build_report`` says what was indexed and skipped.

        Raises:
            InputError: no usable documents, a path that does not exist, no ``into``, bad sizes.
            DocumentError: with ``strict=True``, the first unusable (or too large) file.
            KnowledgeBaseLockedError: another process is writing ``into``.
        """
        if into is None:
            raise InputError("KnowledgeBase.build needs into=, the knowledge base folder to build")
        directory = Path(into)
        if directory.exists() and not directory.is_dir():
            raise InputError(f"{directory} is a file: a knowledge base is a folder, give a new or empty folder")
        if embedder is None:
            embedder = default_embedder()
        chunking = ChunkingConfig(chunk_tokens, overlap_tokens)
        chunking.validate(embedder.max_tokens)
        hnsw.validate()
        check_limit(max_document_mb)
        sources, skipped = _documents.discover(documents)
        if not sources and not skipped:
            raise InputError(f"no documents (.txt or .md) found in {describe(documents)}: "
                             "point at files or folders that hold some")
        directory.mkdir(parents=True, exist_ok=True)
        writer.refuse_foreign(directory)
        started = time.perf_counter()
        with WriteLock(directory, lock_timeout_s):
            docs, more_skipped = selection.inspect_all(sources, {}, strict, max_document_mb)
            skipped += more_skipped
            if not docs:
                reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped[:5])
                raise InputError(f"no usable documents in {describe(documents)} ({reasons}): "
                                 f"give UTF-8 .txt or .md files with text")
            new, n_added, _, empty, indexed = writer.write_generation(
                directory, writer.published(directory), embedder, chunking, hnsw, docs, [], progress, rebuild=True,
                if_empty=f"no text to index in {describe(documents)}: the documents hold only headings or whitespace")
        kb = cls.open(directory, embedder=embedder, query_variant=query_variant)
        kb.build_report = BuildReport(tuple(indexed), (), (), (), tuple(skipped + empty), n_added, 0, new.chunks,
                                      new.generation, time.perf_counter() - started)
        return kb

    @classmethod
    def open_or_build(cls, documents: PathsLike, into: str | os.PathLike[str], *, embedder=None,
                      rebuild: bool = False, exact: bool = False, chunk_tokens: int | None = None,
                      overlap_tokens: int | None = None, progress: Progress | None = None,
                      query_variant: str = "auto") -> tuple[KnowledgeBase, BuildReport]:
        """The knowledge base at ``into``, holding ``documents``: built when there is none there
        (or with ``rebuild``), else opened and given the new and changed documents (:meth:`add`).

        Args:
            documents, into, embedder, progress: as :meth:`build` takes them.
            query_variant: how queries are embedded, as :meth:`open` takes it.
            rebuild: build anew even when a knowledge base is there (re-chunks everything).
            exact: documents the knowledge base holds that are not among ``documents`` (deleted,
                moved away, from another set) are removed before adding, so it holds exactly them.
            chunk_tokens, overlap_tokens: chunking of a build (None: :meth:`build`'s default).

        Returns:
            The opened knowledge base and what this call indexed (its ``build_report`` or ``add``'s).

        Raises:
            ChunkingMismatchError: a chunking value differs from the existing knowledge base's
                (adding never re-chunks what is there): pass ``rebuild=True`` or drop it.
            And what :meth:`build`, :meth:`open` and :meth:`add` raise.
        """
        directory = Path(into)
        given: dict[str, Any] = {name: value for name, value in (("chunk_tokens", chunk_tokens),
                                                                 ("overlap_tokens", overlap_tokens)) if value is not None}
        if rebuild or not (directory / manifest.MANIFEST).exists():
            built = cls.build(documents, directory, embedder=embedder, progress=progress, query_variant=query_variant,
                              **given)
            assert built.build_report is not None  # set by build
            return built, built.build_report
        kb = cls.open(directory, embedder=embedder, query_variant=query_variant)
        try:
            has = {"chunk_tokens": kb.manifest.chunk_tokens, "overlap_tokens": kb.manifest.overlap_tokens}
            clashes = {name: value for name, value in given.items() if has[name] != value}
            if clashes:
                def said(values: dict[str, int]) -> str:
                    return ", ".join(f"{name}={value}" for name, value in values.items())

                raise ChunkingMismatchError(
                    f"knowledge base {directory} was built with {said(has)}; adding documents keeps its chunking, "
                    f"so {said(clashes)} would be ignored: pass rebuild=True to re-chunk, or drop it", has, clashes)
            if exact:
                wanted = set(_documents.discover(documents)[0])
                for source in kb.sources():  # first: a document moved into place must not count as a duplicate
                    if source not in wanted:
                        kb.remove(source)
            return kb, kb.add(documents, progress=progress)
        except BaseException:
            kb.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, embedder=None, verify: str = "auto",
             lock_timeout_s: float = 0.0, query_variant: str = "auto",
             query_cache_size: int = QUERY_CACHE_SIZE) -> KnowledgeBase:
        """Open a knowledge base for searching (and updating with ``add``/``remove``).

        Also compiles the scoring kernels (``scoring.warm_up``) so that the first query
        pays no compile time; ``stats().warm_up_s`` says how long that took.

        Args:
            path: the folder given to ``build``.
            embedder: an ``Embedder`` of the same model and dimension as the one that built it;
                None opens the model and variant the knowledge base's manifest records.
            verify: ``"auto"``, ``"size"`` or ``"full"`` (see the module docstring).
            lock_timeout_s: default wait for the writer lock in ``add``/``remove``.
            query_variant: ``"auto"`` (queries of an fp32-built knowledge base opened with an fp32
                embedder use the same model's int8-full graph: 0.44x its time on a loaded machine,
                no bundled question of 878 lost), ``"fp32"``, ``"int8"`` or ``"int8-full"``; see
                ``engine/kb/query_cache.py``.
            query_cache_size: query vectors kept for exact repeats of a query (0: none).

        Raises:
            InputError: an unknown ``query_variant``, or a ``query_cache_size`` below 0.
            KnowledgeBaseCorruptError: no manifest, or a file missing, truncated or failing its checksum.
            KnowledgeBaseMismatchError: another embedder, dimension or format version.
            ModelError: the graph ``query_variant`` names is missing or corrupted.
        """
        directory = Path(path)
        if not directory.is_dir():
            what = "is a file, not a knowledge base folder" if directory.exists() else "does not exist"
            raise KnowledgeBaseCorruptError(f"{directory} {what}: build it with "
                                            f"`bakeoff index DOCS... --kb {directory}`")
        warm = scoring.warm_up()
        for attempt in range(3):
            current = manifest.read(directory)
            if embedder is None:
                embedder = recorded_embedder(directory, current)
            check_embedder(directory, current, embedder)
            try:
                return cls(directory, embedder, current, verify=verify, warm_up_s=warm, lock_timeout_s=lock_timeout_s,
                           query_variant=query_variant, query_cache_size=query_cache_size)
            except KnowledgeBaseCorruptError:
                # A writer may have published and pruned between our reads: retry on the new manifest.
                if attempt == 2 or manifest.read(directory).generation == current.generation:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the chunk store once running searches finish; searching afterwards raises
        ``KnowledgeBaseError``. Idempotent."""
        self._live.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def add(self, documents: PathsLike | None = None, *, progress: Progress | None = None, strict: bool = False,
            lock_timeout_s: float | None = None, max_document_mb: float = _documents.MAX_DOCUMENT_MB) -> BuildReport:
        """Add documents: new ones are indexed, changed ones replaced, unchanged ones skipped.

        Atomic: on any failure or kill the knowledge base stays as it was. This object
        then sees the new generation. ``documents`` is what ``build`` takes, chunked as the
        knowledge base was built; ``max_document_mb`` is the size limit of ``build``.

        Raises:
            InputError: no documents given, a path does not exist, ``max_document_mb`` is not positive.
            DocumentError: with ``strict``, an unusable (or too large) file.
            KnowledgeBaseLockedError: another process is writing.
        """
        if documents is None:
            raise InputError("KnowledgeBase.add needs the documents to add: a file, a folder, a glob or a list of them")
        check_limit(max_document_mb)
        sources, skipped = _documents.discover(documents)
        return self._write(sources, [], skipped, progress, strict, lock_timeout_s, max_document_mb)

    def remove(self, source: str | os.PathLike[str], *, lock_timeout_s: float | None = None) -> BuildReport:
        """Remove a document's chunks (by the path it was added with).

        Raises:
            InputError: the document is not in the knowledge base.
            KnowledgeBaseLockedError: another process is writing.
        """
        name = _documents.source_name(source)
        return self._write([], [name], [], None, False, lock_timeout_s, None)

    def _write(self, sources: list[str], removals: list[str], skipped: list[SkippedFile],
               progress: Progress | None, strict: bool, lock_timeout_s: float | None,
               max_document_mb: float | None) -> BuildReport:
        started = time.perf_counter()
        if self._live.closed:
            raise KnowledgeBaseError(f"the knowledge base {self.path} was closed: open it again with "
                                     f"KnowledgeBase.open to change it")
        timeout = self.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        with WriteLock(self.path, timeout):
            current = manifest.read(self.path)
            check_embedder(self.path, current, self.embedder)
            for name in removals:
                if name not in current.documents:
                    raise InputError(f"{name} is not in the knowledge base {self.path}: see stats() or "
                                     f"`bakeoff index --list` for what it holds")
            unchanged = [s for s in sources if s in current.documents and selection.unchanged(s, current)]
            docs, more_skipped = selection.inspect_all([s for s in sources if s not in unchanged], current.documents,
                                                       strict, max_document_mb)
            skipped = skipped + more_skipped
            replaced = [d.source for d in docs if d.source in current.documents]
            if not docs and not removals:
                if current.generation != self.manifest.generation:  # another process published since
                    self._live.replace(Snapshot.load(self.path, current, self._verify))
                return BuildReport((), (), tuple(unchanged), (), tuple(skipped), 0, 0, current.chunks,
                                   current.generation, time.perf_counter() - started)
            chunking = ChunkingConfig(current.chunk_tokens, current.overlap_tokens)
            hnsw = HnswConfig(current.hnsw_M, current.hnsw_ef_construction, current.hnsw_ef)
            new, n_added, n_removed, empty, indexed = writer.write_generation(
                self.path, current, self.embedder, chunking, hnsw, docs, removals + replaced, progress)
            # Loaded under the writer lock, so no other writer can prune it first; its files were
            # checksummed a moment ago by this writer, so their sizes are checked only.
            fresh = Snapshot.load(self.path, new, "size")
        self._live.replace(fresh)
        added = tuple(s for s in indexed if s not in replaced)
        return BuildReport(added, tuple(replaced), tuple(unchanged), tuple(removals), tuple(skipped + empty),
                           n_added, n_removed, new.chunks, new.generation, time.perf_counter() - started)

    # ------------------------------------------------------------------ reading

    def search(self, query: str, k: int = 5, *, candidates: int = 64, mmr_lambda: float = MMR_LAMBDA,
               w_dense: float = W_DENSE, w_lexical: float | None = None, k_rrf: float = K_RRF) -> SearchResult:
        """The ``k`` best chunks for ``query``: dense (HNSW) and bm25 candidates, fused, diversified.

        Args:
            query: free text; cut to the embedder's ``max_tokens`` for the dense stage
                (``SearchResult.query_truncated`` says so); bm25 uses its first 64 distinct words.
            k: number of hits; all chunks when larger than the knowledge base.
            candidates: how many candidates each of dense and lexical search contribute; the best
                ``max(candidates, k)`` of their fusion go on to MMR.
            mmr_lambda: MMR weight of relevance against redundancy, in ``[0, 1]`` (1 = no
                diversification, the default: best measured for question answering, see ``MMR_LAMBDA``).
            w_dense, w_lexical: weights of the dense and the bm25 ranking in the fusion (>= 0, not both 0;
                defaults ``W_DENSE`` and ``lexical_weight(query)``, tuned on held-out questions).
            k_rrf: the reciprocal-rank fusion constant (>= 0; default ``K_RRF``).

        Thread-safe: searches of one object run in parallel, also while another thread
        adds or removes documents; each sees one generation, whole.

        Raises:
            InputError: a query that is not a str, is empty or whitespace, or holds a lone surrogate;
                ``k <= 0``, ``candidates <= 0``, ``mmr_lambda`` outside ``[0, 1]``; a fusion weight or
                constant that is negative, NaN or infinite.
            KnowledgeBaseCorruptError: the chunk store turned out damaged (rebuild the knowledge base).
            KnowledgeBaseError: the object was closed.
        """
        if w_lexical is None:
            w_lexical = lexical_weight(query) if isinstance(query, str) else W_LEXICAL  # check_search refuses the rest
        check_search(query, k, candidates, mmr_lambda, w_dense, w_lexical, k_rrf)
        t0 = time.perf_counter()
        text, truncated = truncate_query(query, self.query_embedder)
        q, cached = self._queries.vector(text)
        t1 = time.perf_counter()
        with self._live.reading() as gen:  # the embedding needs no generation: taken after it
            hits, stages_ms = rank(gen, query, q, int(k), max(int(candidates), int(k)), float(mmr_lambda),
                                    float(w_dense), float(w_lexical), float(k_rrf))
        timings = SearchTimings((t1 - t0) * 1e3, *stages_ms, (time.perf_counter() - t0) * 1e3)
        return SearchResult(query, hits, timings, truncated, q, cached)

    # The knowledge base's vector space, for ranking other text (a hit's sentences) the way it
    # ranks its chunks: callers ask the knowledge base, not its embedder.
    def embed_query(self, text: str) -> np.ndarray:
        """A query's vector in this knowledge base's space (read-only; from the query cache when
        ``text`` was asked before)."""
        return self._queries.vector(text)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of passages (not queries) in this knowledge base's space."""
        return self.embedder.embed(list(texts))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this knowledge base's embedder."""
        return self.embedder.count_tokens(text)

    def chunks(self) -> list[Hit]:
        """Every chunk of the generation this object reads, in id order, as hits of score 0.

        For work over the whole knowledge base, such as precomputing chunk states
        (``bakeoff index --kv-cache``).
        """
        with self._live.reading() as gen:
            stored = gen.store.get([int(i) for i in gen.ids])
        return [Hit(c.chunk_id, c.text, c.source, (c.start_char, c.end_char), c.heading, 0.0) for c in stored]

    def stats(self) -> KnowledgeBaseStats:
        """Counts, parameters and on-disk size of the published generation this object reads."""
        m = self.manifest
        return KnowledgeBaseStats(
            str(self.path), m.generation, len(m.documents), m.chunks, m.embedder_model, m.embedder_variant, m.dim,
            ChunkingConfig(m.chunk_tokens, m.overlap_tokens), HnswConfig(m.hnsw_M, m.hnsw_ef_construction, m.hnsw_ef),
            sum(f.size_bytes for f in m.files.values()), self._warm_up_s, self.query_embedder.variant,
            self._queries.hits, self._queries.misses)

    def sources(self) -> list[str]:
        """The documents in the knowledge base (absolute paths), sorted."""
        return sorted(self.manifest.documents)
