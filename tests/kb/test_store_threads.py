"""A read-only chunk store queried from many threads at once: a pool of connections, opened up front."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from engine.kb import store as store_module
from engine.kb.store import ChunkStore

from .conftest import write_store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return write_store(tmp_path / "chunks.sqlite", [
        ([10, 11, 12], "/docs/a.md", [(0, 40, "Pumps", "Place the pump on a level surface."),
                                      (41, 90, "Pumps", "The pump stops without water."),
                                      (91, 140, "Warranty", "The warranty lasts two years.")]),
        ([20], "/docs/b.md", [(0, 20, "", "Offices in Leeds and Porto.")])])


def test_more_threads_than_connections_all_get_their_answers(store_path):
    store = ChunkStore.open_readonly(store_path)
    expected = (store.lexical_search("pump warranty", 5), [c.text for c in store.get([12, 10, 20])])
    answers, errors = [], []

    def query() -> None:
        try:
            for _ in range(50):
                answers.append((store.lexical_search("pump warranty", 5), [c.text for c in store.get([12, 10, 20])]))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=query) for _ in range(3 * store_module.READ_CONNECTIONS + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert answers and all(answer == expected for answer in answers)
    store.close()
    store.close()  # idempotent


def test_a_store_keeps_reading_after_its_file_is_deleted(tmp_path, store_path):
    # A writer deletes a generation two publications later; a reader that opened it keeps its connections.
    copy = tmp_path / "published.sqlite"
    copy.write_bytes(Path(store_path).read_bytes())
    store = ChunkStore.open_readonly(copy)
    copy.unlink()
    with contextlib.ExitStack() as stack:  # every connection of the pool at once, as busy threads would
        connections = [stack.enter_context(store._reading()) for _ in range(store_module.READ_CONNECTIONS)]
        assert len(set(map(id, connections))) == store_module.READ_CONNECTIONS
        for db in connections:
            assert db.execute("SELECT count(*) FROM chunks").fetchone() == (4,)
    assert store.lexical_search("warranty", 5)[0] == [12]


def test_a_closed_store_refuses_queries(store_path):
    store = ChunkStore.open_readonly(store_path)
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.lexical_search("warranty", 5)
