"""Peers side by side: bakeoff's knowledge base against chromadb (embedded) and FAISS (HNSW and flat).

What a Python developer would otherwise use, on the same chunks and the same vectors:
each peer is filled with the vectors bakeoff's knowledge base holds (chromadb is never
given an embedding function, so nothing is downloaded and the model is the same), and
queries are embedded once by bakeoff's embedder. Queries are interleaved in one loop
(system A, B, C on query 1, then on query 2, ...) so background load falls on all alike.

Corpora: the bundled documents (177 chunks and 748 questions before the unseen documents were
added) and bench_retrieval's 10k
knowledge base (about 11k chunks of standard-library docstrings; built on first use).

Measured per system: build time (vectors given), search p50/p95 with the vector given
(k=10), recall@10 of that search against exact inner product, end-to-end p50 (embed the
query, search, fetch the texts) back-to-back and after 1 s idle, bundled QA recall@4,
disk and resident memory (what loading it and one query add to a fresh process),
and the ratios bakeoff / peer.

End to end, bakeoff searches as it opens by default: an fp32-built knowledge base embeds queries
with the int8-full graph (every matmul int8) and answers an exact repeat from its query cache
(engine/kb/query_cache.py).
So that the cache cannot flatter it, the back-to-back and after-idle queries are all distinct
(the after-idle ones were never asked before); exact repeats are a row of their own. chromadb
embeds with bakeoff's fp32 embedder, the same model a chromadb user would run; a second row gives
it that same query graph too, to show what is the graph's and what is the search's.

Parameters: FAISS HNSW uses bakeoff's (M=16, efConstruction=200, efSearch=24); chromadb
keeps its defaults (M=16, construction ef 100, search ef 100), as a user would.

Needs the ``[peers]`` extra (``pip install -e .[peers]``); skipped without it.
Run: .venv/bin/python -m pytest bench/bench_peers.py -o python_files='bench_*.py'
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

chromadb = pytest.importorskip("chromadb", reason='install the "peers" extra: pip install -e .[peers]')
faiss = pytest.importorskip("faiss", reason='install the "peers" extra: pip install -e .[peers]')

from bench_retrieval import stdlib_kb  # noqa: E402
from sizes import folder_bytes  # noqa: E402

from engine.answer.render import shown_content  # noqa: E402  (after the skips) the passage as the prompt shows it
from engine.kb import index  # noqa: E402
from engine.kb.index import HnswConfig  # noqa: E402
from engine.kb.knowledge_base import KnowledgeBase  # noqa: E402
from engine.questions.qa import BUNDLED_SET, is_correct, load_questions  # noqa: E402

K = 10
QUERIES = 200
SPORADIC_GAP_S = 1.0
SPORADIC_QUERIES = 24
BURN_IN = 10


@dataclass
class Corpus:
    """Chunks as bakeoff stores them, their vectors, and queries (text, vector, own chunk id)."""

    name: str
    kb: KnowledgeBase
    ids: np.ndarray
    vectors: np.ndarray
    shown: list[str]  # heading trail + text, as the prompt shows a chunk
    queries: list[str]
    query_vectors: np.ndarray


def rss_of_loading(prepare: str, load: str) -> int:
    """Resident memory that ``load`` (Python code) adds in a fresh interpreter after ``prepare`` ran:
    a separate process, so memory this one already holds or freed cannot hide it. ``load`` must keep
    what it loads in a variable (``kept``): a temporary is freed before the second reading."""
    import subprocess
    import sys

    code = f"{prepare}\nfrom sizes import rss_bytes\nbefore = rss_bytes()\n{load}\nprint(rss_bytes() - before)"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


def _corpus(name: str, kb: KnowledgeBase, queries: list[str]) -> Corpus:
    with kb._live.reading() as generation:
        ids = np.asarray(generation.ids, np.int64).copy()
        vectors = np.asarray(generation.vectors, np.float32).copy()
        chunks = generation.store.get(ids)
    shown = [shown_content(c.heading, c.text) for c in chunks]
    query_vectors = np.stack([kb.embedder.embed_query(q) for q in queries])
    return Corpus(name, kb, ids, vectors, shown, queries, query_vectors)


@pytest.fixture(scope="module")
def embedder(embedder_dir):
    from engine.embedding.embedder import Embedder

    return Embedder(cache_dir=embedder_dir.parent)


@pytest.fixture(scope="module")
def corpora(embedder, tmp_path_factory) -> list[Corpus]:
    questions = load_questions(BUNDLED_SET / "qa.jsonl")
    bundled = KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("peers") / "kb", embedder=embedder)
    out = [_corpus("bundled", bundled, [q.question for q in questions])]
    big = KnowledgeBase.open(stdlib_kb(embedder), embedder=embedder)
    rng = np.random.default_rng(0)
    with big._live.reading() as generation:
        sample = generation.store.get(rng.choice(generation.ids, QUERIES + SPORADIC_QUERIES + BURN_IN, replace=False))
    out.append(_corpus("stdlib 10k", big, [c.text for c in sample]))
    return out


# ---------------------------------------------------------------------- the systems


@dataclass
class System:
    """One system under test: how it searches with a vector given, and end to end."""

    name: str
    search: Callable[[np.ndarray, int], np.ndarray]  # vector, k -> chunk ids best first
    end_to_end: Callable[[str], list[str]] | None  # query text -> shown texts of the top 4
    disk_bytes: int
    rss_bytes: int
    build_s: float
    top4: Callable[[np.ndarray], list[str]] | None = None  # vector -> shown texts of the top 4 (chromadb)
    stages: list | None = None  # bakeoff: the SearchTimings of each end-to-end search


def _bakeoff(corpus: Corpus, tmp: Path) -> System:
    kb = corpus.kb
    config = HnswConfig()
    start = time.perf_counter()
    index.build_graph(corpus.vectors, corpus.ids, config)  # the build, vectors given (the kb's own is on disk)
    build_s = time.perf_counter() - start
    opened = KnowledgeBase.open(kb.path, embedder=kb.embedder)
    rss = rss_of_loading("from engine.embedding.embedder import Embedder\nfrom engine.kb.knowledge_base import KnowledgeBase\n"
                         "embedder = Embedder()\nembedder.embed_query('warm up')",
                         f"kept = KnowledgeBase.open({str(kb.path)!r}, embedder=embedder)\nkept.search('warm up')")

    def search(vector: np.ndarray, k: int) -> np.ndarray:
        with opened._live.reading() as generation:
            return index.search_graph(generation.graph, vector, k, len(generation.ids), config.ef)[0]

    stages: list = []

    def end_to_end(query: str) -> list[str]:
        result = opened.search(query, k=4)
        stages.append(result.timings)
        return [shown_content(h.heading, h.text) for h in result.hits]

    return System(f"bakeoff ({opened.query_embedder.variant} queries)", search, end_to_end,
                  folder_bytes(kb.path / kb.manifest.generation), rss, build_s, stages=stages)


def _chroma(corpus: Corpus, tmp: Path) -> System:
    folder = tmp / f"chroma-{corpus.name.replace(' ', '-')}"  # chromadb caches its clients by path
    shutil.rmtree(folder, ignore_errors=True)
    settings = chromadb.Settings(anonymized_telemetry=False)
    client = chromadb.PersistentClient(path=str(folder), settings=settings)
    # No embedding function: we pass vectors (chromadb's default one would download a model).
    collection = client.create_collection("bench", embedding_function=None)
    row_of = {str(cid): i for i, cid in enumerate(corpus.ids)}
    start = time.perf_counter()
    step = client.get_max_batch_size()
    for at in range(0, len(corpus.ids), step):
        collection.add(ids=[str(c) for c in corpus.ids[at:at + step]], embeddings=corpus.vectors[at:at + step],
                       documents=corpus.shown[at:at + step])
    build_s = time.perf_counter() - start
    del client, collection
    reopened = chromadb.PersistentClient(path=str(folder), settings=settings)
    collection = reopened.get_collection("bench", embedding_function=None)
    collection.query(query_embeddings=corpus.query_vectors[:1], n_results=1)  # loads its index
    rss = rss_of_loading("import chromadb", f"client = chromadb.PersistentClient(path={str(folder)!r}, "
                         "settings=chromadb.Settings(anonymized_telemetry=False))\n"
                         "kept = client.get_collection('bench', embedding_function=None)\nkept.query("
                         f"query_embeddings=[{corpus.query_vectors[0].tolist()!r}], n_results=4)")
    embed = corpus.kb.embedder.embed_query

    def search(vector: np.ndarray, k: int) -> np.ndarray:
        found = collection.query(query_embeddings=vector[None, :], n_results=k, include=[])
        return corpus.ids[[row_of[i] for i in found["ids"][0]]]

    def top4(vector: np.ndarray) -> list[str]:
        return collection.query(query_embeddings=vector[None, :], n_results=4, include=["documents"])["documents"][0]

    def end_to_end(query: str) -> list[str]:
        return top4(embed(query))

    return System(f"chromadb {chromadb.__version__}", search, end_to_end, folder_bytes(folder), rss, build_s, top4)


def _with_queries(chroma: System, embed: Callable[[str], np.ndarray], variant: str) -> System:
    """The same chromadb collection, end to end with another query embedder."""
    assert chroma.top4 is not None
    top4 = chroma.top4
    return System(f"{chroma.name} ({variant} queries)", chroma.search, lambda query: top4(embed(query)),
                  chroma.disk_bytes, chroma.rss_bytes, chroma.build_s)


def _faiss(corpus: Corpus, tmp: Path, kind: str) -> System:
    dim = corpus.vectors.shape[1]
    config = HnswConfig()
    if kind == "hnsw":
        built = faiss.IndexHNSWFlat(dim, config.M, faiss.METRIC_INNER_PRODUCT)
        built.hnsw.efConstruction = config.ef_construction
    else:
        built = faiss.IndexFlatIP(dim)
    start = time.perf_counter()
    built.add(corpus.vectors)
    build_s = time.perf_counter() - start
    path = tmp / f"faiss-{kind}-{corpus.name.replace(' ', '-')}.index"
    faiss.write_index(built, str(path))
    del built
    loaded = faiss.read_index(str(path))
    rss = rss_of_loading("import faiss, numpy", f"kept = faiss.read_index({str(path)!r})\n"
                         f"kept.search(numpy.zeros((1, {dim}), numpy.float32), 4)")
    if kind == "hnsw":
        loaded.hnsw.efSearch = config.ef
    faiss.omp_set_num_threads(1)  # one query at a time, as the others run it

    def search(vector: np.ndarray, k: int) -> np.ndarray:
        return corpus.ids[loaded.search(vector[None, :], k)[1][0]]

    return System(f"FAISS {kind}", search, None, folder_bytes(path), rss, build_s)


# ---------------------------------------------------------------------- the comparison


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def test_peers_side_by_side(corpora, claims, tmp_path):
    for corpus in corpora:
        systems = [_bakeoff(corpus, tmp_path), _chroma(corpus, tmp_path), _faiss(corpus, tmp_path, "hnsw"),
                   _faiss(corpus, tmp_path, "flat")]
        group = f"peers {corpus.name} ({len(corpus.ids)} chunks)"
        queries = corpus.query_vectors[:QUERIES]
        truth = [set(index.exact_search(corpus.vectors, corpus.ids, q, K)[0].tolist()) for q in queries]
        times: dict[str, list[float]] = {s.name: [] for s in systems}
        recall: dict[str, list[float]] = {s.name: [] for s in systems}
        for s in systems:  # burn-in
            for q in queries[:20]:
                s.search(q, K)
        for q, expected in zip(queries, truth):
            for s in systems:
                start = time.perf_counter()
                found = s.search(q, K)
                times[s.name].append(time.perf_counter() - start)
                recall[s.name].append(len(expected & set(found.tolist())) / K)
        # chromadb given the graph bakeoff embeds queries with: what is the graph's and what the search's
        graph = corpus.kb.embedder.with_variant("int8-full")
        chroma_same = _with_queries(systems[1], graph.embed_query, graph.variant)
        e2e = [s for s in systems if s.end_to_end is not None] + [chroma_same]
        warm: dict[str, list[float]] = {s.name: [] for s in e2e}
        sporadic: dict[str, list[float]] = {s.name: [] for s in e2e}
        repeat: dict[str, list[float]] = {s.name: [] for s in e2e}
        texts = corpus.queries[:QUERIES]
        fresh = corpus.queries[QUERIES:QUERIES + SPORADIC_QUERIES]  # never asked before: no cache hits
        for s in e2e:  # burn-in on texts timed nowhere else
            for text in corpus.queries[QUERIES + SPORADIC_QUERIES:QUERIES + SPORADIC_QUERIES + BURN_IN]:
                s.end_to_end(text)
        assert systems[0].stages is not None
        systems[0].stages.clear()
        for text in texts:
            for s in e2e:
                start = time.perf_counter()
                s.end_to_end(text)
                warm[s.name].append(time.perf_counter() - start)
        stages = list(systems[0].stages)
        for text in fresh:
            for s in e2e:
                time.sleep(SPORADIC_GAP_S)
                start = time.perf_counter()
                s.end_to_end(text)
                sporadic[s.name].append(time.perf_counter() - start)
        for text in texts[:SPORADIC_QUERIES]:  # exact repeats of questions asked above
            for s in e2e:
                start = time.perf_counter()
                s.end_to_end(text)
                repeat[s.name].append(time.perf_counter() - start)
        for s in systems:
            claims.add(group, f"{s.name}: build, vectors given", s.build_s, "s")
            claims.add(group, f"{s.name}: search p50 (vector given, k={K})", _p(times[s.name], 50), "ms")
            claims.add(group, f"{s.name}: search p95 (vector given, k={K})", _p(times[s.name], 95), "ms")
            claims.add(group, f"{s.name}: recall@{K} against exact search", float(np.mean(recall[s.name])), "")
            claims.add(group, f"{s.name}: disk", s.disk_bytes / 2**20, "MiB")
            claims.add(group, f"{s.name}: RSS of loading it (fresh process)", s.rss_bytes / 2**20, "MiB")
        for s in e2e:
            claims.add(group, f"{s.name}: end-to-end p50, back-to-back", _p(warm[s.name], 50), "ms")
            claims.add(group, f"{s.name}: end-to-end p95, back-to-back", _p(warm[s.name], 95), "ms")
            claims.add(group, f"{s.name}: end-to-end p50 after {SPORADIC_GAP_S:g} s idle (fresh queries)",
                       _p(sporadic[s.name], 50), "ms")
            claims.add(group, f"{s.name}: end-to-end p50, exact repeat", _p(repeat[s.name], 50), "ms")
        for field in ("embed_ms", "dense_search_ms", "lexical_search_ms", "scoring_ms", "total_ms"):
            claims.add(group, f"{systems[0].name}: search stage p50 back-to-back, {field}",
                       float(np.median([getattr(t, field) for t in stages])), "ms")
        ours, chroma = systems[0].name, systems[1].name
        for s in systems[1:]:
            claims.add(group, f"search p50 bakeoff / {s.name}", _p(times[ours], 50) / _p(times[s.name], 50), "x")
        # Per query, ours over chromadb's right after it: background load changes between queries.
        for peer in (chroma, chroma_same.name):
            claims.add(group, f"end-to-end back-to-back, bakeoff / {peer} (median of paired ratios)",
                       float(np.median(np.divide(warm[ours], warm[peer]))), "x",
                       target="<= 0.5" if "10k" in corpus.name and peer == chroma else None)
            claims.add(group, f"end-to-end after {SPORADIC_GAP_S:g} s idle, bakeoff / {peer} (median of paired "
                       "ratios)", float(np.median(np.divide(sporadic[ours], sporadic[peer]))), "x",
                       target="<= 0.5" if "10k" in corpus.name and peer == chroma else None)
            claims.add(group, f"end-to-end exact repeat, bakeoff / {peer} (median of paired ratios)",
                       float(np.median(np.divide(repeat[ours], repeat[peer]))), "x")
        if corpus.name == "bundled":
            questions = load_questions(BUNDLED_SET / "qa.jsonl")
            qa = {}
            for s in e2e:
                found = [any(is_correct(t, q.answers) for t in s.end_to_end(q.question)) for q in questions]
                qa[s.name] = 100 * float(np.mean(found))
                claims.add(group, f"{s.name}: bundled QA recall@4 ({len(questions)} questions)", qa[s.name], "%",
                           ">= 90" if s.name == ours else None)
            claims.add(group, "bundled QA recall@4, bakeoff - chromadb", qa[ours] - qa[chroma], "points", ">= 5")
