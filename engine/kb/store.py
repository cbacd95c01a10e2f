"""The chunk store: chunk text, source, span and heading in SQLite, with FTS5 for bm25.

One ``chunks.sqlite`` per generation. Writers copy the previous generation's file
and apply their changes (``ChunkStore.open_writable``); readers open it read-only
and immutable (``ChunkStore.open_readonly``), so they take no SQLite locks and never
see a write in progress. Chunk ids are the hnswlib labels of the same chunks.

A read-only store serves many threads at once from a pool of ``READ_CONNECTIONS``
connections (one per CPU core, at most 8), all opened with the store: each query
borrows one that no other thread is using, or waits for one. Queries therefore run
in parallel (``sqlite3`` releases the GIL while SQLite works), without leaning on
the ``sqlite3`` module's thread safety for a shared connection, and without a
connection per thread that would outlive its thread. Opening them all at once
matters: a writer may delete this generation's folder once two newer ones are
published, and connections already open keep reading the deleted file, while a
new one could not be opened. A damaged file found while querying is
``KnowledgeBaseCorruptError``, as it is when opening.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import KnowledgeBaseCorruptError
from engine.kb.lexical import document_terms, query_expression

_TABLE = """
CREATE TABLE chunks(
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL,
    terms TEXT NOT NULL DEFAULT ''
);
CREATE INDEX chunks_by_source ON chunks(source);
"""
# The heading trail is a column of its own, so bm25 counts it as part of the chunk (the prompt shows
# it above the text, and the embedder sees it too) without stretching the text column's length.
# ``terms`` holds the chunk's CamelCase words split (engine/kb/lexical.py).
_FTS = """
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, heading, terms, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading, terms) VALUES (new.id, new.text, new.heading, new.terms);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading, terms)
    VALUES ('delete', old.id, old.text, old.heading, old.terms);
END;
"""
#: Words in more than this fraction of a store's chunks (and in more than ``FREQUENT_MIN_CHUNKS``)
#: are left out of bm25 queries: at 10k chunks of docstrings, 2 % (117 words) cut the bm25 stage's
#: p50 to 0.34x, with the same end-to-end recall@5 (bench/bench_retrieval.py
#: ``test_bm25_stage_frequent_words_left_out``).
FREQUENT_FRACTION = 0.02
FREQUENT_MIN_CHUNKS = 200
#: Connections of a read-only store: queries beyond the CPU cores would only queue for them.
READ_CONNECTIONS = max(1, min(os.cpu_count() or 1, 8))
#: What to do about a damaged or missing knowledge base file.
REBUILD_HINT = "rebuild it with `bakeoff index --rebuild DOCS... --kb KB_DIR`"


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: id, source path, character span, heading trail and text."""

    chunk_id: int
    source: str
    start_char: int
    end_char: int
    heading: str
    text: str


class ChunkStore:
    """Chunks of one generation in SQLite. Use ``create``, ``open_writable`` or ``open_readonly``."""

    def __init__(self, connections: list[sqlite3.Connection], path: Path, *, shared: bool = False) -> None:
        self._db = connections[0]
        self.path = path
        self._shared = shared  # a read-only store: threads borrow connections from the pool
        self._returned = threading.Condition(threading.Lock())
        self._idle = list(connections)
        self._opened = list(connections)
        self._frequent: frozenset[str] = frozenset()

    @classmethod
    def create(cls, path: Path) -> ChunkStore:
        """A new, empty store at ``path`` (which must not exist)."""
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        db.executescript(_TABLE + _FTS)
        return cls([db], path)

    @classmethod
    def open_writable(cls, path: Path) -> ChunkStore:
        """Open a private copy (a new generation's file) for changes, from one thread.

        A file written before the ``terms`` column existed gets it here, and its FTS index
        is rebuilt with it, so every chunk of the new generation is indexed alike.
        """
        db = sqlite3.connect(path, isolation_level=None)
        if "terms" not in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}:
            _add_terms(db)
        return cls([db], path)

    @classmethod
    def open_readonly(cls, path: Path) -> ChunkStore:
        """Open a published generation's file: read-only, immutable, no locks, for any number of threads.

        Raises:
            KnowledgeBaseCorruptError: the file is missing or is not a chunk store.
        """
        if not path.is_file():
            raise KnowledgeBaseCorruptError(f"{path} is missing: {REBUILD_HINT}")
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        opened: list[sqlite3.Connection] = []
        try:
            for _ in range(READ_CONNECTIONS):
                # check_same_thread=False: the pool lends a connection to one thread at a time.
                opened.append(sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False))
            opened[0].execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'x'").fetchone()
            frequent = _read_frequent(opened[0])
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:  # a flipped schema byte decodes badly
            for db in opened:
                db.close()
            raise KnowledgeBaseCorruptError(f"{path} is not a readable chunk store ({error}): {REBUILD_HINT}") from None
        store = cls(opened, path, shared=True)
        store._frequent = frequent
        return store

    def close(self) -> None:
        """Close every connection (idempotent). No query may be running."""
        with self._returned:
            opened, self._opened, self._idle = self._opened, [], []
            self._returned.notify_all()  # a query waiting for a connection fails instead of waiting forever
        for db in opened:
            db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for one query, no other thread's; SQLite errors become ``KnowledgeBaseCorruptError``."""
        if not self._shared:
            db = self._db  # a writer's store: one thread, one connection
        else:
            with self._returned:
                while not self._idle:
                    if not self._opened:
                        raise sqlite3.ProgrammingError(f"{self.path}: the chunk store was closed")
                    self._returned.wait()
                db = self._idle.pop()
        try:
            yield db
        except sqlite3.ProgrammingError:
            raise  # a misuse of the connection (closed, wrong thread): our bug, not the file's
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:  # a flipped schema byte decodes badly
            raise KnowledgeBaseCorruptError(f"{self.path} cannot be read ({error}): {REBUILD_HINT}") from None
        finally:
            if self._shared:
                with self._returned:
                    self._idle.append(db)
                    self._returned.notify()

    def insert(self, chunk_ids: Sequence[int], source: str,
               rows: Iterable[tuple[int, int, str, str]]) -> None:
        """Insert chunks of one source: ``rows`` are ``(start_char, end_char, heading, text)``."""
        self._db.executemany(
            "INSERT INTO chunks(id, source, start_char, end_char, heading, text, terms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((cid, source, a, b, h, t, document_terms(h, t)) for cid, (a, b, h, t) in zip(chunk_ids, rows, strict=True)),
        )

    def begin(self) -> None:
        """Start a transaction (one per generation keeps writes fast)."""
        self._db.execute("BEGIN")

    def commit(self) -> None:
        """Record the store's frequent terms (``FREQUENT_FRACTION``), commit, and make the file durable."""
        _write_frequent(self._db)
        self._db.execute("COMMIT")

    def delete_source(self, source: str) -> list[int]:
        """Delete every chunk of ``source``; returns their ids."""
        ids = [row[0] for row in self._db.execute("SELECT id FROM chunks WHERE source = ?", (source,))]
        self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))
        return ids

    def optimize(self) -> None:
        """Merge FTS5 segments (after a build) so bm25 queries touch one b-tree."""
        self._db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('optimize')")

    def count(self) -> int:
        """Number of chunks."""
        with self._reading() as db:
            return db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def get(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        """Chunks by id, in the order asked (unknown ids are left out)."""
        if not len(chunk_ids):
            return []
        marks = ",".join("?" * len(chunk_ids))
        with self._reading() as db:
            rows = db.execute(
                f"SELECT id, source, start_char, end_char, heading, text FROM chunks WHERE id IN ({marks})",
                [int(c) for c in chunk_ids],
            ).fetchall()
        by_id = {row[0]: StoredChunk(*row) for row in rows}
        return [by_id[int(c)] for c in chunk_ids if int(c) in by_id]

    def lexical_search(self, query: str, limit: int) -> tuple[list[int], list[float]]:
        """bm25 search: ``(chunk_ids, scores)`` best first; scores are -bm25 (higher is better).

        Words of the query found in more than ``FREQUENT_FRACTION`` of the chunks are left
        out (unless nothing else is left): FTS5 scores every chunk that holds any query
        term, so one such word makes the query several times slower, while its low idf
        moves bm25's ranking little and the dense ranking is fused with it anyway.
        """
        expression = query_expression(query, drop=self._frequent)
        if not expression or limit <= 0:
            return [], []
        with self._reading() as db:
            rows = db.execute(
                "SELECT rowid, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?",
                (expression, limit),
            ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]


def _add_terms(db: sqlite3.Connection) -> None:
    """Give a store written before the ``terms`` column that column, and rebuild its FTS index with it.

    Not one transaction (``executescript`` commits first): the file is a writer's private copy,
    which a failed write discards whole.
    """
    db.execute("ALTER TABLE chunks ADD COLUMN terms TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT id, heading, text FROM chunks").fetchall()
    db.execute("BEGIN")
    db.executemany("UPDATE chunks SET terms = ? WHERE id = ?", ((document_terms(h, t), i) for i, h, t in rows))
    db.execute("COMMIT")
    db.executescript("DROP TRIGGER chunks_ai; DROP TRIGGER chunks_ad; DROP TABLE chunks_fts;" + _FTS
                     + "INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');")


def _write_frequent(db: sqlite3.Connection) -> None:
    """Store the words more frequent than ``FREQUENT_FRACTION`` in ``lexical_frequent`` (in the open
    transaction). ``fts5vocab`` counts every word's chunks in one pass over the index: ~10 ms at 10k chunks."""
    db.execute("CREATE TABLE IF NOT EXISTS lexical_frequent(term TEXT PRIMARY KEY, chunks INTEGER NOT NULL)")
    db.execute("DELETE FROM lexical_frequent")
    db.execute("CREATE VIRTUAL TABLE temp.chunks_vocab USING fts5vocab(main, chunks_fts, 'row')")
    try:
        total = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        cut = max(FREQUENT_MIN_CHUNKS, FREQUENT_FRACTION * total)
        db.execute("INSERT INTO lexical_frequent SELECT term, doc FROM temp.chunks_vocab WHERE doc > ?", (cut,))
    finally:
        db.execute("DROP TABLE temp.chunks_vocab")


def _read_frequent(db: sqlite3.Connection) -> frozenset[str]:
    """The frequent words ``_write_frequent`` stored; none in a file written before it existed."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'lexical_frequent'").fetchone():
        return frozenset()
    return frozenset(row[0] for row in db.execute("SELECT term FROM lexical_frequent"))
