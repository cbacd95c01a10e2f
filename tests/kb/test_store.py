"""The SQLite chunk store: rows, FTS5 bm25 search, read-only opening, damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import KnowledgeBaseCorruptError
from engine.kb.lexical import MAX_QUERY_TERMS, query_expression
from engine.kb.store import ChunkStore

from .conftest import write_store

ROWS = [
    (0, 40, "Pumps > Install", "Place the pump on a level surface near the barrel."),
    (41, 90, "Pumps > Dry run", "The pump stops after twenty seconds without water."),
    (91, 140, "Warranty", "The warranty lasts two years from the date of purchase."),
]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return write_store(tmp_path / "chunks.sqlite", [([10, 11, 12], "/docs/a.md", ROWS),
                                                   ([20], "/docs/b.md", [(0, 20, "", "Offices in Leeds and Porto.")])],
                       optimize=True)


def test_rows_come_back_by_id_in_the_order_asked(store_path):
    store = ChunkStore.open_readonly(store_path)
    got = store.get([12, 10, 99])
    assert [c.chunk_id for c in got] == [12, 10]
    assert got[1].source == "/docs/a.md" and (got[1].start_char, got[1].end_char) == (0, 40)
    assert got[1].heading == "Pumps > Install"
    assert store.count() == 4


def test_bm25_ranks_the_chunk_with_the_query_words_first(store_path):
    store = ChunkStore.open_readonly(store_path)
    ids, scores = store.lexical_search("how long is the warranty?", 10)
    assert ids[0] == 12
    assert scores == sorted(scores, reverse=True)
    ids, _ = store.lexical_search("pump", 10)
    assert set(ids) == {10, 11}


def test_headings_are_searchable(store_path):
    ids, _ = ChunkStore.open_readonly(store_path).lexical_search("install", 5)
    assert ids == [10]


@pytest.mark.parametrize(("query", "words", "found"), [
    ('"unbalanced', ['"unbalanced"'], []),  # a stray quote is not a phrase: the word alone, in no chunk
    ("AND OR NOT", ['"not"'], []),  # operators are words ("and"/"or" are stop words), not syntax
    ("NEAR(pump", ['"near"', '"pump"'], [10, 11]),  # NEAR( is not a function: "near" is in chunk 10
    ("col:pump*", ['"col"', '"pump"'], [10, 11]),  # no column filter, no prefix query ("pumps" headings aside)
    ("^-+()", [], []),
    ("???", [], []),
], ids=["quote", "operators", "near", "column-prefix", "symbols", "question-marks"])
def test_fts5_syntax_in_a_query_is_taken_literally(store_path, query, words, found):
    assert query_expression(query).split(" OR ") == (words or [""])
    ids, _ = ChunkStore.open_readonly(store_path).lexical_search(query, 5)
    assert sorted(ids) == found


def test_a_long_query_keeps_a_bounded_number_of_terms():
    expression = query_expression(" ".join(f"w{i}" for i in range(5000)))
    assert expression.count(" OR ") == MAX_QUERY_TERMS - 1
    assert query_expression("  ... !!! ") == ""


def test_deleting_a_source_removes_its_chunks_from_fts_too(tmp_path, store_path):
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(store_path.read_bytes())
    store = ChunkStore.open_writable(copy)
    store.begin()
    assert sorted(store.delete_source("/docs/a.md")) == [10, 11, 12]
    store.commit()
    store.close()
    reader = ChunkStore.open_readonly(copy)
    assert reader.lexical_search("pump warranty", 5) == ([], [])
    assert reader.count() == 1
    # The published file was not touched.
    assert ChunkStore.open_readonly(store_path).count() == 4


def test_a_missing_or_garbage_file_is_a_corrupt_knowledge_base(tmp_path):
    with pytest.raises(KnowledgeBaseCorruptError, match="missing"):
        ChunkStore.open_readonly(tmp_path / "nope.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(KnowledgeBaseCorruptError, match="rebuild"):
        ChunkStore.open_readonly(garbage)


def test_common_words_are_dropped_unless_they_are_all_there_is():
    assert query_expression("What is the warranty of the pump?") == '"warranty" OR "pump"'
    assert query_expression("what is this") == '"what" OR "is" OR "this"'
