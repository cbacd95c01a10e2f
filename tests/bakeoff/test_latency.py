"""The latency stages of a mode, the spliced prefill's split into the question's own tokens and the
attention over spliced positions, with the real models (no timing assertions: only what was measured)."""

from __future__ import annotations

import pytest

from engine.bakeoff.latency import PREFILL_SPLIT, TimedWay, time_mode, time_modes
from engine.embedding.embedder import Embedder
from engine.errors import InputError
from engine.facade import Engine
from engine.generation.kv_cache import ChunkKvCache
from engine.kb import KnowledgeBase
from engine.questions.qa import BUNDLED_SET, load_questions

QUESTIONS = [q for q in load_questions(BUNDLED_SET / "qa.jsonl") if q.split == "heldout"][:2]


@pytest.fixture(scope="module")
def engine(generator_model_path, embedder_dir, tmp_path_factory):
    kb = KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir), chunk_tokens=160, overlap_tokens=24)
    with Engine(generator_model_path, kb=kb, n_ctx=1024, k=3, kv_cache=ChunkKvCache(None)) as engine:
        yield engine


def test_the_question_alone_evaluates_the_tokens_a_spliced_answer_evaluates(engine):
    question = QUESTIONS[0].question
    spliced = engine.ask(question, "rag", splice="on", max_tokens=1).timings.generation
    alone = engine.prefill_without_passages(question, "rag")
    assert spliced.spliced_tokens > 0
    assert alone.spliced_tokens == 0
    # the same prefix, cached for both, and the same question tokens evaluated; only the passages are gone
    assert alone.reused_tokens == spliced.reused_tokens > 0
    assert alone.prefill_tokens == spliced.prefill_tokens
    assert alone.prompt_tokens == spliced.prompt_tokens - spliced.spliced_tokens


def test_the_question_alone_is_refused_in_the_baked_mode(engine):
    with pytest.raises(InputError, match="baked"):
        engine.prefill_without_passages(QUESTIONS[0].question, "baked")
    with pytest.raises(InputError, match="empty"):
        engine.prefill_without_passages("  ", "rag")


def test_a_spliced_mode_splits_its_prefill_and_full_prefill_does_not(engine):
    timed = dict(warmup=1, repetitions=1, max_tokens=4, say=lambda *_: None)
    spliced = time_mode(engine, QUESTIONS, "rag", splice="on", label="rag-spliced", **timed)
    full = time_mode(engine, QUESTIONS, "rag", **timed)
    assert set(spliced.prefill_split_p50_ms) == set(PREFILL_SPLIT)
    question_ms, spliced_ms = (spliced.prefill_split_p50_ms[s] for s in PREFILL_SPLIT)
    assert question_ms > 0
    assert question_ms + spliced_ms == pytest.approx(spliced.stage_p50_ms["generation.prefill_ms"])
    assert full.prefill_split_p50_ms == {}, "a full prefill has no spliced positions to split off"


def test_ways_are_timed_in_rounds_forward_then_backward_each_turn_started_untimed(engine, monkeypatch):
    asked = []
    ask = engine.ask

    def recording(question, mode, *, max_tokens, splice=None):
        asked.append((mode, splice, max_tokens))
        return ask(question, mode, max_tokens=max_tokens, splice=splice)

    monkeypatch.setattr(engine, "ask", recording)
    ways = [TimedWay("rag", "rag"), TimedWay("rag-spliced", "rag", "on")]
    summaries = time_modes(engine, QUESTIONS, ways, warmup=1, repetitions=2, max_tokens=2, say=lambda *_: None)
    assert [s.samples for s in summaries.values()] == [4, 4] and list(summaries) == ["rag", "rag-spliced"]
    full, spliced = ("rag", "off", 2), ("rag", "on", 2)
    turn = [("rag", "off", 1), full, full], [("rag", "on", 1), spliced, spliced]
    assert asked == [full, spliced, *turn[0], *turn[1], *turn[1], *turn[0]], \
        "warm-ups, then round one forward and round two backward, each turn after one untimed 1-token answer"
