"""The comparison runner and its report, on a few facts with the real models."""

from __future__ import annotations

import json

import pytest

from engine.compare import READER_MODE, CompareConfig, answer_passage, run_comparison, select_questions
from engine.embedder import Embedder
from engine.facade import Engine
from engine.kb import KnowledgeBase
from engine.qa import BUNDLED_SET, is_correct, load_questions
from engine.report import retrieval_vs_reader, summary_table, write_report

QUESTIONS = load_questions(BUNDLED_SET / "qa.jsonl")


def test_selection_keeps_every_heldout_and_n_train_per_fact():
    chosen = select_questions(QUESTIONS, CompareConfig(train_per_fact=2, limit_facts=3))
    assert {q.fact_id for q in chosen} == {"F001", "F002", "F003"}
    assert sum(q.split == "heldout" for q in chosen) == 3
    assert sum(q.split == "train" for q in chosen) == 6


def test_grading_is_case_insensitive_containment():
    assert is_correct("It costs €39.90 today.", ("€39.90",))
    assert is_correct("ILSE VARKONEN founded it", ("Ilse Varkonen",))
    assert not is_correct("It costs 39 euros", ("€39.90", "39.90"))


@pytest.fixture(scope="module")
def comparison(generator_model_path, embedder_dir, tiny_finetune, tmp_path_factory):
    report, _ = tiny_finetune
    kb = KnowledgeBase.build([BUNDLED_SET / "docs"], path=tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir))
    # Two trained facts and one fact the v2 documents change (the Brookling B3 price).
    subset = [q for q in QUESTIONS if q.fact_id in ("F001", "F002", "F071")]
    config = CompareConfig(train_per_fact=1, timing_questions=2, repetitions=2, warmup=1, max_tokens=24)
    phases = []
    with Engine(generator_model_path, adapter=report.adapter_path, kb=kb, n_ctx=1024) as engine:
        result = run_comparison(engine, subset, config=config, docs_dir=BUNDLED_SET / "docs",
                                work_dir=tmp_path_factory.mktemp("fresh") / "work",
                                progress=lambda phase, done, total: phases.append(phase))
    return result, phases, tmp_path_factory.mktemp("report")


def test_both_modes_graded_on_every_split(comparison):
    result, phases, _ = comparison
    for mode in ("rag", "baked"):
        assert result.counts[mode] == {"train": 3, "heldout": 3, "updated": 2}
        assert set(result.accuracy[mode]) == {"train", "heldout", "updated"}
    assert {"accuracy/rag", "accuracy/baked", "latency/rag", "latency/baked", "freshness/rag"} <= set(phases)
    rag_answers = [a for a in result.answers if a.mode == "rag"]
    assert all(a.cited_sources for a in rag_answers), "every RAG answer cites its passages"
    assert all(not a.cited_sources for a in result.answers if a.mode == "baked")


def test_trained_facts_are_answered_by_the_adapter(comparison):
    result, _, _ = comparison
    baked_train = [a for a in result.answers if a.mode == "baked" and a.split == "train" and a.fact_id != "F071"]
    assert all(a.correct for a in baked_train), [a.answer for a in baked_train]


def test_latency_is_summarised_per_mode(comparison):
    result, _, _ = comparison
    for mode in ("rag", "baked"):
        latency = result.latency[mode]
        assert latency.samples == 4
        assert 0 < latency.ttft_p50_ms <= latency.ttft_p95_ms
        assert latency.ttft_p50_ms <= latency.total_p50_ms
    assert result.latency["rag"].stage_p50_ms["embed_ms"] > 0
    assert result.latency["baked"].stage_p50_ms["embed_ms"] == 0
    assert result.latency["rag"].prompt_tokens_p50 > result.latency["baked"].prompt_tokens_p50
    assert result.ttft_ratio_rag_over_baked == pytest.approx(
        result.latency["rag"].ttft_p50_ms / result.latency["baked"].ttft_p50_ms)


def test_report_files(comparison):
    result, _, out = comparison
    files = write_report(result, out, context={"model": "SmolLM2-135M-Instruct"})
    payload = json.loads(files.json_path.read_text())
    assert payload["accuracy"] == json.loads(json.dumps(result.accuracy))
    markdown = files.markdown_path.read_text()
    assert summary_table(result) in markdown and "Measured TTFT ratio" in markdown
    assert {p.name for p in files.plots} >= {"latency_stages.png", "latency_ttft_total.png", "accuracy.png"}
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.partial"))


def test_context_recall_is_reported_for_rag(comparison):
    result, _, _ = comparison
    assert set(result.context_recall) == {"train", "heldout", "updated"}
    rag = [a for a in result.answers if a.mode == "rag"]
    assert all(a.answer_in_context is not None for a in rag)
    assert all(a.answer_in_context is None for a in result.answers if a.mode == "baked")
    # an answer that contains the accepted string with its passage missing would be a guess
    assert 0.0 <= min(result.context_recall.values()) <= max(result.context_recall.values()) <= 1.0


def test_reader_is_measured_with_perfect_retrieval(comparison):
    result, phases, _ = comparison
    reader = [a for a in result.answers if a.mode == READER_MODE]
    assert [a.split for a in reader] == ["heldout"] * 3
    assert f"accuracy/{READER_MODE}" in phases
    subset = {q.id: q for q in QUESTIONS}
    for a in reader:
        assert a.cited_sources == (subset[a.question_id].source.rsplit("/", 1)[-1],)
    assert result.reader_accuracy["heldout"] == sum(a.correct for a in reader) / 3
    assert result.counts[READER_MODE] == {"heldout": 3}
    assert any("perfect retrieval" in p for p in retrieval_vs_reader(result))


@pytest.fixture(scope="module")
def bundled_kb(embedder_dir, tmp_path_factory):
    with KnowledgeBase.build([BUNDLED_SET / "docs"], path=tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir)) as kb:
        yield kb


def test_every_heldout_answer_sits_inside_one_chunk_of_its_source(bundled_kb):
    """The perfect-retrieval measurement needs a passage for every held-out question."""
    for q in (q for q in QUESTIONS if q.split == "heldout"):
        passage = answer_passage(bundled_kb, q)
        assert passage is not None, q.id
        assert passage.source.endswith(q.source.rsplit("/", 1)[-1]) and is_correct(f"{passage.heading}\n{passage.text}", q.answers)
