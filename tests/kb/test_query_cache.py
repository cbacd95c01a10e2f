"""How a knowledge base embeds queries: the int8-full graph for an fp32-built one (fp32 on request),
and exact repeats answered from a bounded, thread-safe cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.errors import InputError, ModelError
from engine.kb import KnowledgeBase

from .conftest import write_corpus

QUESTIONS = ["How long is the warranty?", "Where is the headquarters?", "What happens when the pump runs dry?",
             "Which office builds the hub firmware?"]


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("query-cache")
    KnowledgeBase.build(write_corpus(root / "docs"), root / "kb", embedder=embedder).close()
    return root / "kb"


def test_an_fp32_built_knowledge_base_embeds_queries_with_int8_full_unless_told_fp32(kb_dir, embedder):
    with KnowledgeBase.open(kb_dir, embedder=embedder) as kb, \
            KnowledgeBase.open(kb_dir, embedder=embedder, query_variant="fp32") as reference:
        assert kb.query_embedder.variant == "int8-full" and kb.stats().query_variant == "int8-full"
        assert kb.query_embedder.model_id == embedder.model_id and kb.embedder is embedder  # documents stay fp32
        assert reference.query_embedder is embedder and reference.stats().query_variant == "fp32"
        for question in QUESTIONS:  # same answers in the same order; the vectors agree to rounding
            fast, exact = kb.search(question, k=2), reference.search(question, k=2)
            assert [h.chunk_id for h in fast.hits] == [h.chunk_id for h in exact.hits]
            assert float(fast.query_embedding @ exact.query_embedding) > 0.99


def test_a_folder_exported_before_int8_full_embeds_queries_with_int8(kb_dir, embedder, tmp_path):
    """A model folder of one's own with the fp32 and int8 graphs only (what fetch wrote before
    int8-full): "auto" takes the int8 graph, and asking for int8-full says which file is missing."""
    from engine.embedding.embedder import Embedder
    from engine.models.registry import INT8_FULL_NAME

    source = embedder._made_with[0]
    older = tmp_path / source.name  # the folder's name is the model's id the knowledge base checks
    older.mkdir()
    for item in source.iterdir():
        if item.name != INT8_FULL_NAME:
            (older / item.name).symlink_to(item)
    with KnowledgeBase.open(kb_dir, embedder=Embedder(older)) as kb:
        assert kb.query_embedder.variant == "int8"
    with pytest.raises(ModelError, match=INT8_FULL_NAME):
        KnowledgeBase.open(kb_dir, embedder=Embedder(older), query_variant="int8-full")


def test_an_unknown_query_variant_or_cache_size_is_refused(kb_dir, embedder):
    with pytest.raises(InputError, match="query_variant must be one of auto, fp32, int8, int8-full"):
        KnowledgeBase.open(kb_dir, embedder=embedder, query_variant="fp16")
    for size in (-1, 1.5, True):
        with pytest.raises(InputError, match="query_cache_size"):
            KnowledgeBase.open(kb_dir, embedder=embedder, query_cache_size=size)


def test_a_repeated_query_is_not_embedded_again_and_gives_identical_results(kb_dir, embedder):
    with KnowledgeBase.open(kb_dir, embedder=embedder) as kb:
        first = kb.search(QUESTIONS[0], k=3)
        again = kb.search(QUESTIONS[0], k=3)
        assert not first.query_cached and again.query_cached
        assert again.hits == first.hits
        assert np.array_equal(again.query_embedding, first.query_embedding)
        assert not again.query_embedding.flags.writeable  # shared between searches: nobody may change it
        assert kb.embed_query(QUESTIONS[0]) is again.query_embedding
        stats = kb.stats()
        assert (stats.query_cache_hits, stats.query_cache_misses) == (2, 1)


def test_the_cache_keeps_the_most_recent_queries_only(kb_dir, embedder):
    with KnowledgeBase.open(kb_dir, embedder=embedder, query_cache_size=2) as kb:
        for question in QUESTIONS[:3]:
            kb.search(question)
        assert len(kb._queries) == 2
        assert kb.search(QUESTIONS[2]).query_cached and kb.search(QUESTIONS[1]).query_cached
        assert not kb.search(QUESTIONS[0]).query_cached  # the oldest went first
    with KnowledgeBase.open(kb_dir, embedder=embedder, query_cache_size=0) as kb:
        kb.search(QUESTIONS[0])
        assert not kb.search(QUESTIONS[0]).query_cached and len(kb._queries) == 0


def test_threads_asking_the_same_and_other_questions_get_what_one_thread_gets(kb_dir, embedder):
    with KnowledgeBase.open(kb_dir, embedder=embedder, query_variant="int8", query_cache_size=3) as kb:
        expected = {q: [h.chunk_id for h in kb.search(q, k=3).hits] for q in QUESTIONS}
        wrong: list[str] = []

        def ask(offset: int) -> None:
            for i in range(40):
                question = QUESTIONS[(i + offset) % len(QUESTIONS)]
                if [h.chunk_id for h in kb.search(question, k=3).hits] != expected[question]:
                    wrong.append(question)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not wrong and len(kb._queries) <= 3
        stats = kb.stats()
        assert stats.query_cache_hits + stats.query_cache_misses == len(QUESTIONS) + 4 * 40
