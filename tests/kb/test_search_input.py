"""What ``search`` refuses, and a chunk store found damaged while searching (issue 12, item 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError, KnowledgeBaseCorruptError
from engine.kb.knowledge_base import KnowledgeBase

from .conftest import write_corpus


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder) -> KnowledgeBase:
    root = tmp_path_factory.mktemp("search-input")
    with KnowledgeBase.build([write_corpus(root / "docs")], root / "kb", embedder=embedder,
                             chunk_tokens=48, overlap_tokens=8) as built:
        yield built


@pytest.mark.parametrize("query", [None, b"warranty", 123, ["warranty"]])
def test_a_query_that_is_not_a_str_says_so(kb, query):
    with pytest.raises(InputError, match=f"must be a str, not {type(query).__name__}"):
        kb.search(query)


@pytest.mark.parametrize("query", ["\ud800", "warranty \udcff terms"])
def test_a_lone_surrogate_in_the_query_is_an_input_error(kb, query):
    with pytest.raises(InputError, match="lone surrogate"):
        kb.search(query)


@pytest.mark.parametrize("weights", [
    {"w_dense": math.nan}, {"w_lexical": math.nan}, {"k_rrf": math.nan},
    {"w_dense": math.inf}, {"w_lexical": -math.inf}, {"k_rrf": math.inf},
    {"w_dense": -1.0}, {"k_rrf": -0.5}, {"w_dense": np.float32("nan")},
    {"w_dense": 0.0, "w_lexical": 0.0}, {"w_dense": 1e308, "w_lexical": 1e308}, {"w_dense": 10 ** 400},
])
def test_fusion_weights_that_are_not_finite_non_negative_numbers_are_input_errors(kb, weights):
    with pytest.raises(InputError, match="fusion needs"):
        kb.search("warranty", **weights)


def test_extreme_but_valid_fusion_weights_give_finite_scores(kb):
    for weights in ({"w_dense": 1e300, "w_lexical": 0.0, "k_rrf": 0.0}, {"w_dense": 1e-300, "k_rrf": 1e6}):
        hits = kb.search("warranty", k=3, **weights).hits
        assert hits and all(math.isfinite(h.score) for h in hits)


def test_a_chunk_store_damaged_after_opening_is_a_corrupt_error_that_says_to_rebuild(tmp_path, embedder):
    kb_dir = tmp_path / "kb"
    KnowledgeBase.build([write_corpus(tmp_path / "docs")], kb_dir, embedder=embedder).close()
    kb = KnowledgeBase.open(kb_dir, embedder=embedder)
    generation = json.loads((kb_dir / "manifest.json").read_text())["generation"]
    store = Path(kb_dir / generation / "chunks.sqlite")
    page = 4096
    size = store.stat().st_size
    with open(store, "r+b") as handle:  # every page but the header page overwritten, size unchanged
        handle.seek(page)
        handle.write(b"\x07" * (size - page))
    with pytest.raises(KnowledgeBaseCorruptError, match=r"bakeoff index --rebuild") as caught:
        for query in ("warranty", "pump seal", "Which office builds the app?"):
            kb.search(query, k=3)
    assert str(store) in str(caught.value)
