"""Functions run in child processes by test_rebuild_atomic.py and test_concurrency.py (spawned, so importable)."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path

from engine.embedding.embedder import Embedder
from engine.kb.knowledge_base import KnowledgeBase

#: Topics of the generated corpora: each document's distinctive word, then filler words.
_WORDS = ("pump hub barrel valve hose ring seal frost cover winter summer garden bed water night morning "
          "sensor battery solar panel firmware update office support order serial warranty claim").split()


def write_documents(folder: Path, prefix: str, count: int, sentences: int, seed: int) -> list[str]:
    """Write ``count`` markdown documents named ``{prefix}-N.md`` of seeded made-up sentences.

    Each document holds its own marker word (``{prefix}marker{N}``), so a search can tell
    which document set a knowledge base holds. Returns the marker words.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    markers = []
    for n in range(count):
        marker = f"{prefix}marker{n}"
        markers.append(marker)
        lines = [f"# {prefix.title()} document {n}", ""]
        for s in range(sentences):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
            if s % 5 == 0:
                words.insert(rng.randrange(len(words)), marker)
            lines.append(" ".join(words).capitalize() + ".")
            if s % 6 == 5:
                lines.append("")
        (folder / f"{prefix}-{n}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return markers


def rebuild(kb_dir: str, cache_dir: str, docs_dir: str, chunk_tokens: int, ready) -> None:
    """Rebuild ``kb_dir`` from ``docs_dir``; set ``ready`` just before (the parent kills us at some point)."""
    embedder = Embedder(cache_dir=cache_dir)
    ready.set()
    KnowledgeBase.build([docs_dir], kb_dir, embedder=embedder, chunk_tokens=chunk_tokens, overlap_tokens=8)


def rebuild_and_die(kb_dir: str, cache_dir: str, docs_dir: str, chunk_tokens: int) -> None:
    """Rebuild ``kb_dir`` and die without cleanup (like a kill) once some chunks are written."""
    embedder = Embedder(cache_dir=cache_dir)

    def die(event) -> None:
        if event.chunks_done > 0:
            os._exit(17)

    KnowledgeBase.build([docs_dir], kb_dir, embedder=embedder, chunk_tokens=chunk_tokens, overlap_tokens=8,
                        progress=die)


QUERIES = ("frost covers protect the pumps in winter", "how long is the warranty", "Which office builds the app?",
           "pump dry run seal", "Tallinn hub firmware", "extra note about the solar panel battery")


def search_while_writing(kb_dir: str, cache_dir: str, extra: str, seconds: float, threads: int,
                         report_path: str) -> None:
    """Search from ``threads`` threads while one thread adds and removes ``extra`` for ``seconds``.

    Then check every result against the two generations it may come from: the base
    documents alone, or with one whole batch of ``extra``'s chunks (each add gives them
    new ids). Writes a JSON report; exits 0 when every check passed, 3 otherwise.
    """
    kb = KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir))
    truth = {h.chunk_id: (h.source, h.span, h.text) for h in kb.search("anything", k=10_000).hits}
    kb.add([extra])
    first = kb.manifest.next_chunk_id - kb.manifest.documents[extra].chunks
    layout = {h.chunk_id - first: (h.span, h.text) for h in kb.search("anything", k=10_000).hits
              if h.source == extra}
    kb.remove(extra)
    batches = [first]
    results: list[list[tuple]] = []
    errors: list[str] = []
    stop = threading.Event()

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple] = []
        try:
            while not stop.is_set():
                hits = kb.search(rng.choice(QUERIES), k=rng.choice((3, 8)), mmr_lambda=rng.choice((0.5, 1.0))).hits
                mine.append(tuple((h.chunk_id, h.source, h.span, h.text) for h in hits))
        except BaseException:  # noqa: BLE001 - every exception is a failure this test reports
            errors.append(traceback.format_exc())
        results.append(mine)

    def writer() -> None:
        try:
            while not stop.is_set():
                report = kb.add([extra])
                batches.append(kb.manifest.next_chunk_id - report.chunks_added)
                kb.remove(extra)
        except BaseException:  # noqa: BLE001
            errors.append(traceback.format_exc())

    workers = [threading.Thread(target=searcher, args=(n,)) for n in range(threads)]
    workers.append(threading.Thread(target=writer))
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join(120)
    searches = sum(len(r) for r in results)
    errors += _check(results, truth, extra, layout, set(batches))
    Path(report_path).write_text(json.dumps({"searches": searches, "writes": len(batches) - 1,
                                             "errors": errors[:20]}), encoding="utf-8")
    sys.exit(0 if not errors else 3)


def _check(results: list[list[tuple]], truth: dict, extra: str, layout: dict, batches: set[int]) -> list[str]:
    """Every hit is a base chunk as it was, or a chunk of one whole batch of ``extra`` as it was added."""
    problems = []
    for result in (r for mine in results for r in mine):
        ids = [hit[0] for hit in result]
        if len(set(ids)) != len(ids):
            problems.append(f"repeated chunk ids in one result: {result}")
        starts = set()
        for chunk_id, source, span, text in result:
            if source == extra:
                start = max((b for b in batches if b <= chunk_id), default=None)
                if start is None or layout.get(chunk_id - start) != (span, text):
                    problems.append(f"chunk {chunk_id} of {extra} is in no added batch as returned: {span} {text!r}")
                starts.add(start)
            elif truth.get(chunk_id) != (source, span, text):
                problems.append(f"chunk {chunk_id} does not match the store: {source} {span} {text!r}")
        if len(starts) > 1:
            problems.append(f"one result mixes chunks of two generations: {ids}")
    return problems
