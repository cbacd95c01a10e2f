"""The chunk store: chunk text, source, span and heading in SQLite, with FTS5 for bm25.

One ``chunks.sqlite`` per generation. Writers copy the previous generation's file
and apply their changes (``ChunkStore.open_writable``); readers open it read-only
and immutable (``ChunkStore.open_readonly``), so they take no SQLite locks and never
see a write in progress. Chunk ids are the hnswlib labels of the same chunks.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
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

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def create(cls, path: Path) -> ChunkStore:
        """A new, empty store at ``path`` (which must not exist)."""
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=DELETE")
        db.executescript(_SCHEMA)
        return cls(db, path)

    @classmethod
    def open_writable(cls, path: Path) -> ChunkStore:
        """Open a private copy (a new generation's file) for changes."""
        return cls(sqlite3.connect(path, isolation_level=None), path)

    @classmethod
    def open_readonly(cls, path: Path) -> ChunkStore:
        """Open a published generation's file: read-only, immutable, no locks.

        Raises:
            KnowledgeBaseCorruptError: the file is missing or is not a chunk store.
        """
        if not path.is_file():
            raise KnowledgeBaseCorruptError(f"{path} is missing: rebuild with `bakeoff index`")
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'x'").fetchone()
        except sqlite3.DatabaseError as error:
            raise KnowledgeBaseCorruptError(f"{path} is not a readable chunk store ({error}): "
                                            f"rebuild with `bakeoff index`") from None
        return cls(db, path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

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
        return self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def get(self, chunk_ids: Sequence[int]) -> list[StoredChunk]:
        """Chunks by id, in the order asked (unknown ids are left out)."""
        if not len(chunk_ids):
            return []
        marks = ",".join("?" * len(chunk_ids))
        rows = self._db.execute(
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
        rows = self._db.execute(
            "SELECT rowid, -bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY bm25(chunks_fts) LIMIT ?",
            (expression, limit),
        ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]
