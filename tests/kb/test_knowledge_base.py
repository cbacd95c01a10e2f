"""KnowledgeBase end to end with the real embedder: search, updates, bad input, damage, processes."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import (
    DocumentError,
    InputError,
    KnowledgeBaseCorruptError,
    KnowledgeBaseLockedError,
    KnowledgeBaseMismatchError,
)
from engine.kb.index import HnswConfig
from engine.kb.knowledge_base import Hit, KnowledgeBase
from engine.kb.locking import WriteLock

from . import _workers
from .conftest import write_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder) -> Path:
    """A knowledge base of the small corpus, built once for the read-only tests."""
    root = tmp_path_factory.mktemp("kb")
    KnowledgeBase.build([write_corpus(root / "docs")], root / "kb", embedder=embedder,
                        chunk_tokens=48, overlap_tokens=8)
    return root / "kb"


def _current(kb_dir: Path) -> Path:
    return kb_dir / json.loads((kb_dir / "manifest.json").read_text())["generation"]


# ------------------------------------------------------------------ search


@pytest.mark.parametrize("query, source", [
    ("How long does the warranty last?", "warranty.md"),
    ("what happens when the pump runs dry", "pumps.md"),
    ("Which office builds the app?", "offices.txt"),
])
def test_search_finds_the_document_that_answers(built, embedder, query, source):
    result = KnowledgeBase.open(built, embedder=embedder).search(query, k=3)
    assert Path(result.hits[0].source).name == source
    assert all(isinstance(h, Hit) for h in result.hits)


def test_default_hits_come_best_first_and_an_identifier_query_weighs_bm25_more(built, embedder):
    from engine.kb import ranking

    kb = KnowledgeBase.open(built, embedder=embedder)
    # MMR_LAMBDA = 1.0: no diversification, so the hits are in fused-score order.
    scores = [h.score for h in kb.search("How long does the warranty last?", k=4).hits]
    assert scores == sorted(scores, reverse=True)
    # The fused score of bm25's first hit is W_LEXICAL_IDENTIFIER / (K_RRF + 1) for a query
    # naming an identifier; it shows in the best hit's score when only bm25 finds anything.
    assert ranking.lexical_weight("pump.dry_run") == ranking.W_LEXICAL_IDENTIFIER
    assert ranking.lexical_weight("pump dry run") == ranking.W_LEXICAL
    dense_off = kb.search("pump.dry_run", k=1, w_dense=0.0).hits[0].score
    assert dense_off == pytest.approx(ranking.W_LEXICAL_IDENTIFIER / (ranking.K_RRF + 1))


def test_hits_point_at_their_text_in_the_source_file(built, embedder):
    for hit in KnowledgeBase.open(built, embedder=embedder).search("pump hub status ring", k=10).hits:
        text = Path(hit.source).read_text(encoding="utf-8")
        assert text[hit.span[0]:hit.span[1]] == hit.text
        if hit.source.endswith(".md"):
            assert hit.heading


def test_timings_cover_every_stage(built, embedder):
    t = KnowledgeBase.open(built, embedder=embedder).search("warranty", k=2).timings
    stages = [t.embed_ms, t.dense_search_ms, t.lexical_search_ms, t.scoring_ms]
    assert all(s >= 0 for s in stages)
    assert t.total_ms >= sum(stages) * 0.99


def test_k_larger_than_the_knowledge_base_returns_every_chunk(built, embedder):
    kb = KnowledgeBase.open(built, embedder=embedder)
    hits = kb.search("anything at all", k=1000).hits
    assert len(hits) == kb.stats().chunks
    assert len({h.chunk_id for h in hits}) == len(hits)


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_an_input_error(built, embedder, k):
    with pytest.raises(InputError, match="k >= 1"):
        KnowledgeBase.open(built, embedder=embedder).search("warranty", k=k)


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_an_empty_query_is_an_input_error(built, embedder, query):
    with pytest.raises(InputError, match="empty"):
        KnowledgeBase.open(built, embedder=embedder).search(query)


def test_a_10000_character_query_is_truncated_and_still_answers(built, embedder):
    query = ("How long does the warranty last? " * 400)[:10_000]
    result = KnowledgeBase.open(built, embedder=embedder).search(query, k=2)
    assert result.query_truncated
    assert Path(result.hits[0].source).name == "warranty.md"


def test_stats_describe_the_build(built, embedder):
    stats = KnowledgeBase.open(built, embedder=embedder).stats()
    assert (stats.documents, stats.embedder_model, stats.dim) == (3, "all-MiniLM-L6-v2", 384)
    assert stats.chunking.chunk_tokens == 48 and stats.hnsw == HnswConfig()
    assert stats.chunks >= 3 and stats.size_bytes > 0 and stats.warm_up_s >= 0


# ------------------------------------------------------------------ updates


def test_adding_unchanged_changed_and_removed_documents(kb_copy, corpus, embedder, tmp_path):
    kb = KnowledgeBase.open(kb_copy, embedder=embedder)
    before = kb.stats()
    # The built copy indexed another folder's files; index this corpus's warranty under its own path.
    new = tmp_path / "returns.md"
    new.write_text("# Returns\n\nYou can return a device within 30 days for a full refund.\n", encoding="utf-8")
    report = kb.add([new])
    assert report.added == (str(new),) and report.chunks_added == 1
    assert Path(kb.search("refund within 30 days", k=1).hits[0].source) == new

    again = kb.add([new])
    assert again.unchanged == (str(new),) and again.generation == report.generation

    new.write_text("# Returns\n\nReturns are accepted within 14 days, unopened.\n", encoding="utf-8")
    changed = kb.add([new])
    assert changed.replaced == (str(new),) and changed.chunks_removed == 1
    assert "14 days" in kb.search("how many days to return", k=1).hits[0].text

    removed = kb.remove(new)
    assert removed.removed == (str(new),)
    assert kb.stats().chunks == before.chunks
    assert all(Path(h.source) != new for h in kb.search("return refund days", k=50).hits)
    with pytest.raises(InputError, match="not in the knowledge base"):
        kb.remove(new)
    # Another process (here: a fresh open) sees the same state.
    assert KnowledgeBase.open(kb_copy, embedder=embedder).stats().chunks == before.chunks


def test_duplicate_content_is_indexed_once_and_reported(tmp_path, corpus, embedder):
    shutil.copy(corpus / "warranty.md", corpus / "warranty-copy.md")
    kb = KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder)
    report = kb.build_report
    # Paths are processed in sorted order: the first one keeps the content, the other is reported.
    assert [Path(s.source).name for s in report.skipped] == ["warranty.md"]
    assert report.skipped[0].reason == f"same content as {corpus / 'warranty-copy.md'} (indexed once)"
    hits = kb.search("warranty two years", k=10).hits
    assert len([h for h in hits if "two-year limited warranty" in h.text]) == 1


def test_rebuilding_replaces_the_previous_content(kb_copy, tmp_path, embedder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "tea.txt").write_text("Green tea is brewed at 80 degrees for two minutes.", encoding="utf-8")
    kb = KnowledgeBase.build([other], kb_copy, embedder=embedder)
    assert kb.stats().documents == 1 and kb.stats().chunks == 1
    assert len(list(kb_copy.glob("gen-*"))) <= 2


# ------------------------------------------------------------------ bad input


def test_an_empty_folder_has_no_documents(tmp_path, embedder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no documents"):
        KnowledgeBase.build([tmp_path / "empty"], tmp_path / "kb", embedder=embedder)


def test_a_path_that_does_not_exist_is_an_input_error(tmp_path, embedder):
    with pytest.raises(InputError, match="no such file"):
        KnowledgeBase.build([tmp_path / "missing"], tmp_path / "kb", embedder=embedder)


def test_unusable_files_are_skipped_and_reported(tmp_path, corpus, embedder):
    (corpus / "empty.md").write_text("")
    (corpus / "blank.txt").write_text("  \n\n ")
    (corpus / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (corpus / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (corpus / "notes.pdf").write_bytes(b"%PDF-1.4")
    kb = KnowledgeBase.build([corpus, corpus / "notes.pdf"], tmp_path / "kb", embedder=embedder)
    reasons = {Path(s.source).name: s.reason for s in kb.build_report.skipped}
    assert set(reasons) == {"empty.md", "blank.txt", "image.md", "latin1.txt", "notes.pdf"}
    assert "empty" in reasons["empty.md"] and "empty" in reasons["blank.txt"]
    assert "binary" in reasons["image.md"]
    assert "UTF-8" in reasons["latin1.txt"] and "iconv" in reasons["latin1.txt"]
    assert kb.stats().documents == 3


def test_strict_turns_a_skip_into_a_document_error(tmp_path, corpus, embedder):
    (corpus / "latin1.txt").write_bytes("na\xefve".encode("latin-1"))
    with pytest.raises(DocumentError, match="not valid UTF-8"):
        KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder, strict=True)
    assert not (tmp_path / "kb" / "manifest.json").exists()


def test_only_unusable_files_is_an_input_error(tmp_path, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_text("")
    with pytest.raises(InputError, match="no usable documents"):
        KnowledgeBase.build([docs], tmp_path / "kb", embedder=embedder)


def test_a_folder_that_is_not_a_knowledge_base_is_never_overwritten(tmp_path, corpus, embedder):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="not a knowledge base"):
        KnowledgeBase.build([corpus], target, embedder=embedder)
    assert (target / "thesis.tex").read_text() == "keep me"


def test_bad_sizes_are_refused_before_any_work(tmp_path, corpus, embedder):
    with pytest.raises(InputError, match="chunk_tokens"):
        KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder, chunk_tokens=1000)
    with pytest.raises(InputError, match="M="):
        KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder, hnsw=HnswConfig(M=1))


# ------------------------------------------------------------------ damage and mismatch


def test_a_truncated_index_file_is_detected(kb_copy, embedder):
    path = _current(kb_copy) / "index.hnsw"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(KnowledgeBaseCorruptError, match="index.hnsw.*truncated"):
        KnowledgeBase.open(kb_copy, embedder=embedder, verify="size")


def test_a_deleted_chunk_store_is_detected(kb_copy, embedder):
    (_current(kb_copy) / "chunks.sqlite").unlink()
    with pytest.raises(KnowledgeBaseCorruptError, match="chunks.sqlite is missing"):
        KnowledgeBase.open(kb_copy, embedder=embedder)


def test_a_flipped_byte_fails_the_checksum(kb_copy, embedder):
    path = _current(kb_copy) / "vectors.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(KnowledgeBaseCorruptError, match="sha256"):
        KnowledgeBase.open(kb_copy, embedder=embedder, verify="full")


def test_a_missing_manifest_is_not_a_knowledge_base(tmp_path, embedder):
    (tmp_path / "kb").mkdir()
    with pytest.raises(KnowledgeBaseCorruptError, match="not a knowledge base"):
        KnowledgeBase.open(tmp_path / "kb", embedder=embedder)


def test_another_embedder_is_a_mismatch_that_says_to_rebuild(kb_copy, embedder):
    path = kb_copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["embedder_model"] = "bge-small-en-v1.5"
    path.write_text(json.dumps(raw))
    with pytest.raises(KnowledgeBaseMismatchError) as caught:
        KnowledgeBase.open(kb_copy, embedder=embedder)
    message = str(caught.value)
    assert "bge-small-en-v1.5 (384 dims)" in message and "all-MiniLM-L6-v2 (384 dims)" in message
    assert "rebuild with `bakeoff index --rebuild`" in message  # plain `bakeoff index` would refuse the same way


def test_another_format_version_is_a_mismatch(kb_copy, embedder):
    path = kb_copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["format_version"] = 999
    path.write_text(json.dumps(raw))
    with pytest.raises(KnowledgeBaseMismatchError, match="format version 999"):
        KnowledgeBase.open(kb_copy, embedder=embedder)


# ------------------------------------------------------------------ processes


def _spawn() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def test_a_kill_during_add_leaves_the_previous_state(kb_copy, tmp_path, embedder, embedder_dir):
    before = KnowledgeBase.open(kb_copy, embedder=embedder).stats()
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("# A\n\nThe hub relays commands to the pumps.", encoding="utf-8")
    second.write_text("# B\n\nFrost covers protect the pumps in winter.", encoding="utf-8")
    child = _spawn().Process(target=_workers.crash_during_add,
                             args=(str(kb_copy), str(embedder_dir.parent), [str(first), str(second)]))
    child.start()
    child.join(120)
    assert child.exitcode == 17
    assert len(list(kb_copy.glob("gen-*"))) > 1, "the crashed writer should have left a partial generation"
    kb = KnowledgeBase.open(kb_copy, embedder=embedder, verify="full")
    assert kb.stats().chunks == before.chunks and kb.stats().generation == before.generation
    # The next writer cleans up and succeeds.
    small = tmp_path / "small.md"
    small.write_text("A short note about frost covers.", encoding="utf-8")
    assert kb.add([small]).chunks_added == 1


def test_two_processes_read_the_same_knowledge_base(built, embedder_dir):
    with _spawn().Pool(2) as pool:
        results = pool.starmap(_workers.search_sources, [
            (str(built), str(embedder_dir.parent), "How long does the warranty last?"),
            (str(built), str(embedder_dir.parent), "Which office builds the app?"),
        ])
    assert results[0][0] == "warranty.md" and results[1][0] == "offices.txt"


def test_a_second_writer_gets_the_lock_error_or_waits(kb_copy, tmp_path, embedder):
    context = _spawn()
    locked, release = context.Event(), context.Event()
    holder = context.Process(target=_workers.hold_lock, args=(str(kb_copy), locked, release))
    holder.start()
    try:
        assert locked.wait(30)
        kb = KnowledgeBase.open(kb_copy, embedder=embedder)  # readers need no lock
        note = tmp_path / "note.md"
        note.write_text("Frost covers protect the pump in winter.", encoding="utf-8")
        with pytest.raises(KnowledgeBaseLockedError, match="another process is writing"):
            kb.add([note])
        with pytest.raises(KnowledgeBaseLockedError):
            kb.add([note], lock_timeout_s=0.3)
        assert kb.search("frost", k=1).hits
    finally:
        release.set()
        holder.join(30)
    assert kb.add([note], lock_timeout_s=10).chunks_added == 1


def test_the_lock_is_exclusive_within_one_process_too(kb_copy):
    with WriteLock(kb_copy):
        with pytest.raises(KnowledgeBaseLockedError):
            with WriteLock(kb_copy):
                pass


def _write_big(path: Path, megabytes: int) -> Path:
    paragraph = ("The pump moves water from the barrel to the beds at night. " * 6 + "\n\n").encode()
    with open(path, "wb") as handle:
        for _ in range((megabytes << 20) // len(paragraph) + 1):
            handle.write(paragraph)
    return path


def test_a_50_mb_file_is_skipped_with_a_reason_that_says_how_to_raise_the_limit(tmp_path, corpus, embedder):
    # Embedding 50 MB (~12M tokens) would take most of an hour: the default limit refuses it by its size,
    # the rest of the folder is indexed, and the report tells the user what to change.
    big = _write_big(corpus / "big.txt", 50)
    kb = KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder)
    [skipped] = kb.build_report.skipped
    assert skipped.source == str(big)
    assert "50.0 MB is over the 8 MB limit" in skipped.reason and "max_document_mb=56" in skipped.reason
    assert kb.stats().documents == 3 and str(big) not in kb.sources()
    assert Path(kb.search("How long does the warranty last?", k=1).hits[0].source).name == "warranty.md"
    with pytest.raises(DocumentError, match="max_document_mb"):
        KnowledgeBase.build([corpus], tmp_path / "strict", embedder=embedder, strict=True)
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_raising_max_document_mb_admits_a_larger_file(tmp_path, corpus, embedder):
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\n" + "Frost covers protect the pump in winter. " * 500, encoding="utf-8")  # ~20 KB
    kb = KnowledgeBase.build([corpus, notes], tmp_path / "kb", embedder=embedder, max_document_mb=0.01)
    assert [s.source for s in kb.build_report.skipped] == [str(notes)]
    assert "max_document_mb=8" in kb.build_report.skipped[0].reason
    report = kb.add([notes], max_document_mb=0.05)
    assert report.added == (str(notes),) and report.chunks_added > 1
    assert Path(kb.search("frost covers in winter", k=1).hits[0].source) == notes


@pytest.mark.parametrize("limit", [0, -1, True, "8"])
def test_a_bad_max_document_mb_is_refused_before_any_work(tmp_path, corpus, embedder, limit):
    with pytest.raises(InputError, match="max_document_mb"):
        KnowledgeBase.build([corpus], tmp_path / "kb", embedder=embedder, max_document_mb=limit)
    assert not (tmp_path / "kb").exists()


def test_vectors_on_disk_are_normalised(built):
    vectors = np.load(_current(built) / "vectors.npy")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_open_without_an_embedder_uses_the_one_the_manifest_records(built, embedder):
    kb = KnowledgeBase.open(built)
    assert (kb.embedder.model_id, kb.embedder.variant) == ("all-MiniLM-L6-v2", "fp32")
    assert [h.chunk_id for h in kb.search("warranty", k=3).hits] == \
        [h.chunk_id for h in KnowledgeBase.open(built, embedder=embedder).search("warranty", k=3).hits]


def test_open_without_an_embedder_takes_the_recorded_variant(tmp_path, corpus, embedder_dir):
    from engine.embedding.embedder import Embedder

    KnowledgeBase.build([corpus], tmp_path / "kb", embedder=Embedder(cache_dir=embedder_dir.parent, variant="int8"))
    assert KnowledgeBase.open(tmp_path / "kb").embedder.variant == "int8"


def test_build_without_an_embedder_uses_the_default_one(tmp_path, corpus):
    kb = KnowledgeBase.build([corpus], tmp_path / "kb", chunk_tokens=48, overlap_tokens=8)
    assert kb.stats().embedder_model == "all-MiniLM-L6-v2" and kb.stats().dim == 384
    assert Path(kb.search("How long is the warranty?", k=1).hits[0].source).name == "warranty.md"


def test_open_without_an_embedder_still_refuses_a_foreign_manifest_model(kb_copy):
    path = kb_copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["embedder_model"] = "bge-small-en-v1.5"
    path.write_text(json.dumps(raw))
    with pytest.raises(KnowledgeBaseMismatchError, match="open it with embedder=Embedder"):
        KnowledgeBase.open(kb_copy)
