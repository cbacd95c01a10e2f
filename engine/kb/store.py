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
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import KnowledgeBaseCorruptError

_SCHEMA = """
CREATE TABLE chunks(
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    heading TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX chunks_by_source ON chunks(source);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, heading, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
END;
"""
_WORD = re.compile(r"\w+")
#: Connections of a read-only store: queries beyond the CPU cores would only queue for them.
READ_CONNECTIONS = max(1, min(os.cpu_count() or 1, 8))
#: What to do about a damaged or missing knowledge base file.
REBUILD_HINT = "rebuild it with `bakeoff index --rebuild DOCS... --kb KB_DIR`"
MAX_QUERY_TERMS = 64
# Words that match most chunks: OR-ing them makes FTS5 score nearly every row (12 ms
# instead of 1 ms at 10k chunks) while adding almost nothing to bm25's ranking.
STOPWORDS = frozenset("""
a an and are as at be by can do does for from has have how i if in into is it its of on or
that the their them then there these this to was what when where which who why will with
you your
""".split())


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored: id, source path, character span, heading trail and text."""

    chunk_id: int
    source: str
    start_char: int
    end_char: int
    heading: str
    text: str


def lexical_query(text: str) -> str:
    """An FTS5 MATCH expression for free text: its distinct words, quoted, OR-ed.

    Quoting makes FTS5 syntax in the user's text (``AND``, ``*``, ``"``, ``:``) literal.
    Common English words (``STOPWORDS``) are left out unless the query has nothing else.
    At most ``MAX_QUERY_TERMS`` words are kept, so a 10,000-character query stays fast.
    Returns ``""`` when the text has no words.
    """
    terms: dict[str, None] = {}
    words = _WORD.findall(text.lower())
    content = [w for w in words if w not in STOPWORDS]
    for word in content or words:
        terms.setdefault(word, None)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return " OR ".join(f'"{term}"' for term in terms)


class ChunkStore:
    """Chunks of one generation in SQLite. Use ``create``, ``open_writable`` or ``open_readonly``."""

    def __init__(self, connections: list[sqlite3.Connection], path: Path, *, shared: bool = False) -> None:
        self._db = connections[0]
        self.path = path
        self._shared = shared  # a read-only store: threads borrow connections from the pool
        self._returned = threading.Condition(threading.Lock())
        self._idle = list(connections)
        self._opened = list(connections)

    @classmethod
    def create(cls, path: Path) -> ChunkStore:
        """A new, empty store at ``path`` (which must not exist)."""
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        db.executescript(_SCHEMA)
        return cls([db], path)

    @classmethod
    def open_writable(cls, path: Path) -> ChunkStore:
        """Open a private copy (a new generation's file) for changes, from one thread."""
        return cls([sqlite3.connect(path, isolation_level=None)], path)

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
        except (sqlite3.DatabaseError, UnicodeDecodeError) as error:  # a flipped schema byte decodes badly
            for db in opened:
                db.close()
            raise KnowledgeBaseCorruptError(f"{path} is not a readable chunk store ({error}): {REBUILD_HINT}") from None
        return cls(opened, path, shared=True)

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
            "INSERT INTO chunks(id, source, start_char, end_char, heading, text) VALUES (?, ?, ?, ?, ?, ?)",
            ((cid, source, a, b, h, t) for cid, (a, b, h, t) in zip(chunk_ids, rows, strict=True)),
        )

    def begin(self) -> None:
        """Start a transaction (one per generation keeps writes fast)."""
        self._db.execute("BEGIN")

    def commit(self) -> None:
        """Commit the transaction and make the file durable."""
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
        """bm25 search: ``(chunk_ids, scores)`` best first; scores are -bm25 (higher is better)."""
        expression = lexical_query(query)
        if not expression or limit <= 0:
            return [], []
        with self._reading() as db:
            rows = db.execute(
                "SELECT rowid, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts) LIMIT ?",
                (expression, limit),
            ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

