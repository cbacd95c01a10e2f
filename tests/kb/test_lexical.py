"""bm25 terms of technical text: identifiers, versions and error codes found whichever way they are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.kb.lexical import camel_parts, document_terms, names_identifier, query_expression
from engine.kb.store import ChunkStore

from .conftest import write_store

ROWS = [
    (0, 60, "API > Errors", "Raises ReadTimeout when the server does not answer in time."),
    (61, 120, "API > Paths", "Use os.path.join to build the path; see read_csv for tables."),
    (121, 180, "Release notes > 4.1.0", "Forecast Rain Delay skips watering before rain."),
    (181, 240, "Release notes > 4.0.1", "Error E-204 means the pump ran dry: 1 minute, 0 litres, 4 bars."),
    (241, 300, "Timeouts", "A read of the timeout setting returns seconds."),
]


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore.open_readonly(write_store(tmp_path / "chunks.sqlite",
                                                [(list(range(len(ROWS))), "/docs/api.md", ROWS)]))


@pytest.mark.parametrize("word, parts", [
    ("ReadTimeout", ["read", "timeout"]), ("readTimeout", ["read", "timeout"]), ("HTTPServer", ["http", "server"]),
    ("parseJSON2", ["parse", "json", "2"]), ("Python", []), ("HTTP", []), ("utf8", []), ("timeout", []),
])
def test_camel_case_words_split_into_their_pieces(word, parts):
    assert camel_parts(word) == parts


def test_a_chunk_stores_its_camel_case_words_split():
    assert document_terms("Errors > HTTPServer", "Raises ReadTimeout, not Timeout.") == "http server read timeout"
    assert document_terms("Plain", "nothing here") == ""


def test_compounds_are_phrases_plus_their_meaningful_parts():
    assert query_expression("os.path.join") == '"os path join" OR "os" OR "path" OR "join"'
    # A version is its phrase only: its digits alone would match every chunk with a "1".
    assert query_expression("firmware 4.1.0") == '"firmware" OR "4 1 0"'
    assert query_expression("What is E-204?") == '"e 204"'
    assert query_expression("ReadTimeout") == '"readtimeout" OR "read timeout"'
    assert query_expression("Fenwhistle's pump") == '"fenwhistle" OR "pump"'


@pytest.mark.parametrize("query", ["ReadTimeout", "read_timeout", "read-timeout"])
def test_a_camel_case_identifier_is_found_however_the_query_writes_it(store, query):
    ids, _ = store.lexical_search(query, 5)
    assert ids[0] == 0


def test_plain_words_reach_a_camel_case_identifier(store):
    # unicode61 alone indexes "ReadTimeout" as the one word "readtimeout": neither word would reach it.
    assert 0 in store.lexical_search("read timeout", 5)[0]


@pytest.mark.parametrize("query, expected", [("os.path.join", 1), ("read_csv", 1), ("ReadCsv", 1),
                                             ("what changed in 4.1.0", 2), ("E-204", 3)])
def test_identifiers_versions_and_codes_rank_their_chunk_first(store, query, expected):
    ids, _ = store.lexical_search(query, 5)
    assert ids[0] == expected


def test_a_version_does_not_match_chunks_that_only_hold_its_digits(store):
    ids, _ = store.lexical_search("4.1.0", 5)
    assert ids == [2]


def test_a_store_written_before_the_terms_column_is_upgraded_by_its_next_writer(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        CREATE TABLE chunks(id INTEGER PRIMARY KEY, source TEXT NOT NULL, start_char INTEGER NOT NULL,
            end_char INTEGER NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL);
        CREATE INDEX chunks_by_source ON chunks(source);
        CREATE VIRTUAL TABLE chunks_fts USING fts5(text, heading, content='chunks', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2');
        CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading); END;
        CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
        END;""")
    db.execute("INSERT INTO chunks VALUES (0, '/a.md', 0, 10, 'Errors', 'Raises ReadTimeout.')")
    db.close()
    # Readers search an old file as it is; "read timeout" cannot reach its CamelCase word yet.
    assert ChunkStore.open_readonly(path).lexical_search("read timeout", 5) == ([], [])
    writer = ChunkStore.open_writable(path)
    writer.begin()
    writer.insert([1], "/b.md", [(0, 10, "", "A HTTPServer.")])
    writer.commit()
    assert sorted(writer.delete_source("/a.md")) == [0]
    writer.insert([2], "/a.md", [(0, 10, "Errors", "Raises ReadTimeout.")])
    writer.close()
    reader = ChunkStore.open_readonly(path)
    assert reader.lexical_search("read timeout", 5)[0] == [2]
    assert reader.lexical_search("http server", 5)[0] == [1]


def test_words_in_most_chunks_are_left_out_of_a_query_unless_nothing_else_is_left(tmp_path):
    from engine.kb.store import FREQUENT_MIN_CHUNKS

    n = FREQUENT_MIN_CHUNKS + 50
    path = write_store(tmp_path / "many.sqlite", [
        (list(range(n)), "/docs/many.md", [(i, i + 1, "", f"The pump setting number {i}.") for i in range(n)]),
        ([n], "/docs/rare.md", [(0, 1, "", "The pump overheats.")])])
    store = ChunkStore.open_readonly(path)
    # "pump" is in every chunk: scoring it would rank all of them; "overheats" alone decides.
    assert store.lexical_search("pump overheats", 1000)[0] == [n]
    assert len(store.lexical_search("pump", 1000)[0]) == n + 1


@pytest.mark.parametrize("query, named", [
    ("What does numpy.linalg.norm return?", True), ("how to use read_csv", True), ("changes in 4.1.0", True),
    ("Is a MaskedArray writable?", True), ("How long do the LEDs last?", False),
    ("Who is the co-founder?", False), ("What is the price of the B3 pump?", False),
])
def test_a_query_names_an_identifier_when_it_holds_a_dotted_snake_or_camel_case_name(query, named):
    assert names_identifier(query) is named
