"""One ``KnowledgeBase`` searched from many threads while one of them adds and removes documents
(issue 12, defect 2): no crash, no stray exception, every result from one whole generation."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.errors import KnowledgeBaseError
from engine.kb.knowledge_base import KnowledgeBase
from engine.kb.snapshot import LiveSnapshot
from engine.kb.store import ChunkStore

from . import _concurrency_workers as workers
from .conftest import write_corpus


@pytest.fixture
def kb_dir(tmp_path, embedder) -> Path:
    KnowledgeBase.build([write_corpus(tmp_path / "docs")], tmp_path / "kb", embedder=embedder,
                        chunk_tokens=48, overlap_tokens=8).close()
    return tmp_path / "kb"


def test_eight_threads_search_while_one_adds_and_removes_without_crash_or_mixed_generations(kb_dir, tmp_path,
                                                                                             embedder_dir):
    extra = tmp_path / "extra.md"
    extra.write_text("# Extra note\n\nFrost covers protect the pumps in winter; take them off in spring.\n\n"
                     "## Solar\n\nThe solar panel charges the hub battery, which lasts three nights.\n\n"
                     "## Support\n\nThe Tallinn office answers questions about the solar panel firmware.\n",
                     encoding="utf-8")
    report = tmp_path / "report.json"
    child = multiprocessing.get_context("spawn").Process(
        target=workers.search_while_writing,
        args=(str(kb_dir), str(embedder_dir.parent), str(extra), 10.0, 8, str(report)))
    child.start()
    child.join(180)
    if child.exitcode is None:
        child.kill()
        child.join()
    assert child.exitcode == 0, f"exit code {child.exitcode} (negative: killed by that signal); " \
                                f"{report.read_text() if report.exists() else 'no report'}"
    summary = json.loads(report.read_text())
    assert summary["errors"] == []
    assert summary["searches"] >= 100 and summary["writes"] >= 5, summary


def test_searches_of_one_object_run_in_parallel(kb_dir, embedder, monkeypatch):
    kb = KnowledgeBase.open(kb_dir, embedder=embedder)
    both_inside = threading.Barrier(2, timeout=20)
    lexical_search = ChunkStore.lexical_search

    def meet_then_search(self, query, limit):
        both_inside.wait()  # passes only when two searches are inside the store at once
        return lexical_search(self, query, limit)

    monkeypatch.setattr(ChunkStore, "lexical_search", meet_then_search)
    results, errors = [], []

    def search(query: str) -> None:
        try:
            results.append(kb.search(query, k=2))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=search, args=(q,)) for q in ("warranty", "pump seal")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 2


def test_close_waits_for_a_running_search_and_later_searches_say_it_is_closed(kb_dir, embedder, monkeypatch):
    kb = KnowledgeBase.open(kb_dir, embedder=embedder)
    inside, go_on = threading.Event(), threading.Event()
    get = ChunkStore.get

    def slow_get(self, chunk_ids):
        inside.set()
        go_on.wait(20)
        return get(self, chunk_ids)

    monkeypatch.setattr(ChunkStore, "get", slow_get)
    results = []
    searching = threading.Thread(target=lambda: results.append(kb.search("warranty", k=2)))
    searching.start()
    assert inside.wait(20)
    closing = threading.Thread(target=kb.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive(), "close waits for the search that is using the store"
    go_on.set()
    searching.join(20)
    closing.join(20)
    assert results and results[0].hits, "the running search finished on the open store"
    with pytest.raises(KnowledgeBaseError, match="was closed"):
        kb.search("warranty")
    kb.close()  # idempotent


def _fake(number: int) -> SimpleNamespace:
    closed = []
    return SimpleNamespace(number=number, manifest=f"manifest-{number}", close=lambda: closed.append(True),
                           closed=closed)


def test_a_swap_never_goes_back_to_an_older_generation():
    first, newer, older = _fake(5), _fake(7), _fake(6)
    live = LiveSnapshot(first, Path("kb"))  # type: ignore[arg-type]
    live.replace(newer)  # type: ignore[arg-type]
    assert first.closed and live.manifest == "manifest-7"
    live.replace(older)  # type: ignore[arg-type]  # a writer of this object that finished later
    assert older.closed and not newer.closed and live.manifest == "manifest-7"
    live.close()
    assert newer.closed
    late = _fake(8)
    live.replace(late)  # type: ignore[arg-type]
    assert late.closed, "a generation loaded after close is closed, not kept open"
