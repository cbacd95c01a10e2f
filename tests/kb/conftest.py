"""Knowledge-base fixtures: the real embedder (once per session) and a small real corpus."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from engine.embedding.embedder import Embedder
from engine.kb.store import ChunkStore

CORPUS = {
    "pumps.md": """# Brookling Pumps

## Installing the B3

Place the B3 on a level, dry surface. Connect the intake hose to the water barrel.
Press the status ring for three seconds to pair it with the hub.

## Dry-run protection

Running without water damages the shaft seal. The pump stops after 20 seconds without water
and its status ring blinks red. Refill the barrel and press the ring once to restart.
""",
    "warranty.md": """# Warranty terms

Every Fenwhistle device has a two-year limited warranty from the date of purchase.
The warranty covers manufacturing defects but not frost damage or misuse.
To claim, contact support with your order number and the serial number of the device.
""",
    "offices.txt": """Fenwhistle has offices in Leeds, Porto and Tallinn.
The Leeds office is the headquarters and handles customer support for the United Kingdom.
The Tallinn office builds the Grove app and the hub firmware.
""",
}


@pytest.fixture(scope="session")
def embedder(embedder_dir: Path) -> Embedder:
    """The real all-MiniLM-L6-v2 embedder (fp32) from the model cache."""
    return Embedder(cache_dir=embedder_dir.parent)


def write_corpus(folder: Path) -> Path:
    """Write the small corpus into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def write_store(path: Path, batches: Sequence[tuple[list[int], str, list[tuple[int, int, str, str]]]], *,
                optimize: bool = False) -> Path:
    """A real chunk store at ``path`` holding ``batches`` of (chunk ids, source, (start, end, heading, text)
    rows) in one committed transaction (optimized first when asked), closed; returns ``path``."""
    store = ChunkStore.create(path)
    store.begin()
    for ids, source, rows in batches:
        store.insert(ids, source, rows)
    if optimize:
        store.optimize()
    store.commit()
    store.close()
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A fresh copy of the small corpus (3 documents, about 10 chunks)."""
    return write_corpus(tmp_path / "docs")


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder) -> Path:
    """A knowledge base of the small corpus, built once per test module (copy it before damaging it)."""
    from engine.kb.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.build([write_corpus(tmp_path_factory.mktemp("docs"))], tmp_path_factory.mktemp("kb") / "kb",
                             embedder=embedder)
    kb.close()
    return kb.path


@pytest.fixture
def kb_copy(built, tmp_path) -> Path:
    """A private copy of ``built`` that a test may damage."""
    return Path(shutil.copytree(built, tmp_path / "kb"))
