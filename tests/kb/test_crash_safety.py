"""Crash safety of knowledge-base writes (issue 12): SIGKILLs at random points of builds, rebuilds,
adds and removes, and writes that fail with a full disk, leave the old or the new knowledge
base, whole (``verify="full"``) and searchable.

The kills: ``BAKEOFF_CRASH_KILLS`` (default 200) writes, each forked from a long-lived child
that holds the embedder, killed at a seeded random point (``BAKEOFF_CRASH_SEED``, default 12);
``BAKEOFF_CRASH_SECONDS`` bounds the time (default 90 s, or 0.45 s per kill when the count is
raised). The documents are the openings of six bundled documents: one chunk each, so that a
write takes a fraction of a second.
"""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from engine.errors import KnowledgeBaseError
from engine.kb import writer
from engine.kb.knowledge_base import KnowledgeBase
from engine.kb.store import ChunkStore
from engine.questions.qa import BUNDLED_SET
from engine.robustness.crash import failed_writes, kill_writes, small_documents
from engine.robustness.writes import WriterChild

KILLS = int(os.environ.get("BAKEOFF_CRASH_KILLS", "200"))
SECONDS = float(os.environ.get("BAKEOFF_CRASH_SECONDS", "90" if KILLS <= 200 else str(0.45 * KILLS)))
SEED = int(os.environ.get("BAKEOFF_CRASH_SEED", "12"))


@pytest.fixture(scope="module")
def writer_child(embedder_dir):
    child = WriterChild(embedder_dir.parent)
    yield child
    child.stop()


def test_sigkills_at_random_points_of_writes_leave_the_old_or_the_new_knowledge_base(tmp_path, embedder,
                                                                                     writer_child):
    documents = small_documents(tmp_path / "docs")
    (tmp_path / "work").mkdir()
    report = kill_writes(tmp_path / "work", documents, embedder, writer_child, kills=KILLS, seconds=SECONDS,
                         seed=SEED)
    print(f"\ncrash safety, seed {SEED}: {report.survived} of {report.runs} SIGKILLed writes survived in "
          f"{report.seconds:.0f} s ({report.killed_mid_write} mid-write; old state {report.old_state}, new state "
          f"{report.new_state}); {report.by_kind}")
    assert not report.failures, "\n".join(report.failures[:10])
    assert report.survived == report.runs >= min(KILLS, 50), report
    assert set(report.by_kind) == {"build", "rebuild", "add", "remove"}, report.by_kind
    assert report.old_state and report.new_state, "kills landed both before and after a write published"
    assert report.killed_mid_write >= report.runs // 2, report


def test_writes_that_fail_at_every_fsync_rename_and_file_size_keep_the_previous_knowledge_base(
        tmp_path, embedder, writer_child):
    documents = sorted((BUNDLED_SET / "docs").glob("*.md"))[:4]
    (tmp_path / "work").mkdir()
    report = failed_writes(tmp_path / "work", documents, embedder, writer_child, seconds=600)
    print(f"\nfailed writes: {report.survived} of {report.runs} survived in {report.seconds:.0f} s; {report.errors}; "
          f"{report.published_then_raised} raised after publishing")
    assert not report.failures, "\n".join(report.failures[:10])
    assert report.runs >= 30 and report.raised == report.runs, report
    assert set(report.errors) <= {"builtins.OSError", "engine.errors.KnowledgeBaseError"}, report.errors


# The defects the failed writes found, one by one, in this process ---------------------------------


@pytest.fixture
def kb(tmp_path, embedder) -> KnowledgeBase:
    """Two bundled documents; the tests add the third."""
    documents = sorted((BUNDLED_SET / "docs").glob("*.md"))[:2]
    with KnowledgeBase.build(documents, tmp_path / "kb", embedder=embedder, chunk_tokens=64,
                             overlap_tokens=8) as knowledge_base:
        yield knowledge_base


ADDED = sorted((BUNDLED_SET / "docs").glob("*.md"))[2]


def _unchanged(kb: KnowledgeBase, embedder) -> None:
    with KnowledgeBase.open(kb.path, embedder=embedder, verify="full") as reopened:
        assert reopened.sources() == kb.sources()
        assert reopened.search("warranty", k=2).hits


def test_a_graph_file_the_disk_cut_short_is_never_published(kb, embedder, monkeypatch):
    # hnswlib's save_index writes through an unchecked std::ofstream: on a full disk it returns normally.
    extend_graph = writer.index.extend_graph

    class CutShort:
        def __init__(self, graph) -> None:
            self.graph = graph

        def save_index(self, path: str) -> None:
            self.graph.save_index(path)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) - 1000)

    monkeypatch.setattr(writer.index, "extend_graph", lambda *args, **kwargs: CutShort(extend_graph(*args, **kwargs)))
    with pytest.raises(KnowledgeBaseError, match="written incomplete: is the disk full"):
        kb.add([ADDED])
    _unchanged(kb, embedder)


def test_an_array_file_the_disk_cut_short_is_never_published(kb, embedder, monkeypatch):
    # np.save writes through C stdio (ndarray.tofile), whose failed flush can go unreported.
    save = np.save

    def cut_short(path, array) -> None:
        save(path, array)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) - 100)

    monkeypatch.setattr(writer.np, "save", cut_short)
    with pytest.raises(KnowledgeBaseError, match="written incomplete"):
        kb.add([ADDED])
    _unchanged(kb, embedder)


def test_a_full_disk_in_the_chunk_store_is_a_typed_error(kb, embedder, monkeypatch):
    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ChunkStore, "insert", full)
    with pytest.raises(KnowledgeBaseError, match="database or disk is full"):
        kb.add([ADDED])
    _unchanged(kb, embedder)
