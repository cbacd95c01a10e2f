"""A rebuild over an existing knowledge base is as atomic as an add: failed, interrupted or killed,
it leaves the old knowledge base published, whole and searchable (issue 12, defect 1)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from engine.cli import main as cli
from engine.errors import InputError
from engine.kb.knowledge_base import KnowledgeBase

from . import _concurrency_workers as workers

CHUNK_TOKENS = 64
SIZES = {"chunk_tokens": CHUNK_TOKENS, "overlap_tokens": 8}


class Stop(Exception):
    """Raised by a progress callback to interrupt a write."""


@pytest.fixture
def two_sets(tmp_path) -> tuple[Path, list[str], Path, list[str]]:
    """Two folders of documents, ``old`` and ``new``, each with its own marker words."""
    old = tmp_path / "old-docs"
    new = tmp_path / "new-docs"
    old_markers = workers.write_documents(old, "old", 3, 30, seed=1)
    return old, old_markers, new, workers.write_documents(new, "new", 3, 30, seed=2)


def _sources(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.md"))


def _generations(kb_dir: Path) -> list[str]:
    return sorted(p.name for p in kb_dir.glob("gen-*"))


def _assert_holds(kb: KnowledgeBase, docs: Path, markers: list[str]) -> None:
    """The knowledge base holds exactly ``docs``, and a search for a marker finds its document."""
    assert kb.sources() == _sources(docs)
    for n, marker in enumerate(markers):
        assert Path(kb.search(marker, k=1, w_dense=0.0).hits[0].source).name == f"{docs.name.split('-')[0]}-{n}.md"


@pytest.mark.parametrize("interrupt", [Stop, KeyboardInterrupt])
def test_an_exception_from_progress_mid_rebuild_keeps_the_old_knowledge_base(tmp_path, two_sets, embedder, interrupt):
    old, old_markers, new, _ = two_sets
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    before = _generations(kb_dir)

    def stop_midway(event) -> None:
        if event.chunks_done > 0:
            raise interrupt("stop")

    with pytest.raises(interrupt):
        KnowledgeBase.build([new], kb_dir, embedder=embedder, **SIZES, progress=stop_midway)
    assert _generations(kb_dir) == before, "the unpublished generation is removed at once"
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        _assert_holds(kb, old, old_markers)


def test_a_rebuild_that_finds_no_text_keeps_the_old_knowledge_base(tmp_path, two_sets, embedder):
    old, old_markers, _, _ = two_sets
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    headings = tmp_path / "headings"
    headings.mkdir()
    (headings / "only.md").write_text("# Title\n\n## Section\n", encoding="utf-8")
    with pytest.raises(InputError, match="no text to index"):
        KnowledgeBase.build([headings], kb_dir, embedder=embedder)
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        _assert_holds(kb, old, old_markers)


def test_a_rebuild_publishes_the_new_contents_and_keeps_one_previous_generation(tmp_path, two_sets, embedder):
    old, _, new, new_markers = two_sets
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    first = _generations(kb_dir)
    with KnowledgeBase.build([new], kb_dir, embedder=embedder, **SIZES) as kb:
        _assert_holds(kb, new, new_markers)
        assert kb.stats().generation > first[-1], "a rebuild writes a new folder, never over the published one"
    # The previous generation stays for a reader that read the old manifest a moment ago.
    assert _generations(kb_dir) == [first[-1], kb.stats().generation]


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write(tmp_path, two_sets, embedder):
    old, _, new, new_markers = two_sets
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    published = _generations(kb_dir)[-1]
    leftover = kb_dir / f"gen-{int(published[4:]) + 1:06d}"
    leftover.mkdir()
    (leftover / "chunks.sqlite").write_bytes(b"half a database")
    kb = KnowledgeBase.open(kb_dir, embedder=embedder)
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nA short note about frost covers.\n", encoding="utf-8")
    kb.add([note])
    assert _generations(kb_dir) == [published, kb.stats().generation]
    kb.close()
    leftover = kb_dir / f"gen-{int(_generations(kb_dir)[-1][4:]) + 1:06d}"
    leftover.mkdir()
    (leftover / "vectors.npy").write_bytes(b"not yet")
    with KnowledgeBase.build([new], kb_dir, embedder=embedder, **SIZES) as kb:
        _assert_holds(kb, new, new_markers)
        assert kb.stats().generation == leftover.name, "the leftover was removed before the rebuild wrote its folder"
    assert len(_generations(kb_dir)) == 2
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        _assert_holds(kb, new, new_markers)


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def test_bakeoff_index_works_on_a_knowledge_base_whose_rebuild_was_killed(tmp_path, two_sets, embedder, embedder_dir,
                                                                          capsys):
    old, old_markers, new, new_markers = two_sets
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    child = _spawn().Process(target=workers.rebuild_and_die,
                             args=(str(kb_dir), str(embedder_dir.parent), str(new), CHUNK_TOKENS))
    child.start()
    child.join(120)
    assert child.exitcode == 17
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        _assert_holds(kb, old, old_markers)
    # Adding to it (`bakeoff index` without --rebuild) opens it: it is whole.
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nA short note about frost covers.\n", encoding="utf-8")
    assert cli.main(["index", str(note), "--kb", str(kb_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["documents"] == len(old_markers) + 1
    # And `bakeoff index --rebuild` replaces it.
    assert cli.main(["index", str(new), "--kb", str(kb_dir), "--rebuild", "--chunk-tokens", str(CHUNK_TOKENS),
                     "--overlap-tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["documents"] == len(new_markers)
    with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
        _assert_holds(kb, new, new_markers)


KILLS = 20


def test_sigkill_at_random_points_of_a_rebuild_leaves_the_old_or_the_new_knowledge_base(tmp_path, two_sets, embedder,
                                                                                       embedder_dir):
    old, old_markers, new, new_markers = two_sets
    kb_dir = tmp_path / "kb"
    states = {tuple(_sources(old)): (old, old_markers), tuple(_sources(new)): (new, new_markers)}
    # How long a rebuild takes here sets the range of the kill delays (it also leaves the KB in "new").
    KnowledgeBase.build([old], kb_dir, embedder=embedder, **SIZES).close()
    started = time.perf_counter()
    KnowledgeBase.build([new], kb_dir, embedder=embedder, **SIZES).close()
    rebuild_s = time.perf_counter() - started
    rng = random.Random(12)
    context = _spawn()
    outcomes = []
    for _ in range(KILLS):
        with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
            current = tuple(kb.sources())
        target = old if current == tuple(_sources(new)) else new
        ready = context.Event()
        child = context.Process(target=workers.rebuild,
                                args=(str(kb_dir), str(embedder_dir.parent), str(target), CHUNK_TOKENS, ready))
        child.start()
        try:
            assert ready.wait(120), "the child did not start"
            time.sleep(rng.uniform(0, 1.3 * rebuild_s))
        finally:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGKILL)
            child.join(60)
        assert child.exitcode in (0, -signal.SIGKILL)
        with KnowledgeBase.open(kb_dir, embedder=embedder, verify="full") as kb:
            assert tuple(kb.sources()) in states, f"neither the old nor the new documents: {kb.sources()}"
            docs, markers = states[tuple(kb.sources())]
            _assert_holds(kb, docs, markers)
            outcomes.append("new" if docs == target else "old")
        assert len(_generations(kb_dir)) <= 3, "published, previous, and at most one killed write's folder"
    assert "old" in outcomes, f"no kill landed before the rebuild published ({outcomes})"
