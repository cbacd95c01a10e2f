"""The comparison runner and its report, on a few facts with the real models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine import Answer, AnswerTimings, Citation, GenerationTimings, SearchTimings
from engine.bakeoff.compare import READER_MODE, READER_MODES, CompareConfig, run_comparison, select_questions
from engine.bakeoff.latency import PREFILL_SPLIT, STAGES, stage_ms
from engine.bakeoff.report import retrieval_vs_reader, summary_table, write_report
from engine.embedding.embedder import Embedder
from engine.errors import InputError
from engine.facade import Engine
from engine.generation.kv_cache import ChunkKvCache
from engine.kb import KnowledgeBase
from engine.questions.qa import (
    BUNDLED_SET,
    answer_passage,
    exact_match,
    is_correct,
    is_one_sentence,
    load_questions,
    normalize,
    token_f1,
)

QUESTIONS = load_questions(BUNDLED_SET / "qa.jsonl")


class _KbFixed(Engine):
    """An Engine whose knowledge base cannot be swapped: the comparison must ask, not reach in."""

    def __setattr__(self, name, value):
        if name == "kb":
            raise AssertionError("the comparison swapped Engine.kb: use Engine.ask(passages=...)")
        super().__setattr__(name, value)


def test_selection_keeps_every_heldout_and_n_train_per_fact():
    chosen = select_questions(QUESTIONS, CompareConfig(train_per_fact=2, limit_facts=3))
    assert {q.fact_id for q in chosen} == {"F001", "F002", "F003"}
    assert sum(q.split == "heldout" for q in chosen) == 3
    assert sum(q.split == "train" for q in chosen) == 6


def test_grading_is_case_insensitive_containment():
    assert is_correct("It costs €39.90 today.", ("€39.90",))
    assert is_correct("ILSE VARKONEN founded it", ("Ilse Varkonen",))
    assert not is_correct("It costs 39 euros", ("€39.90", "39.90"))


def test_the_other_two_grading_rules_follow_squad():
    assert normalize("The price is €189 [2].") == "price is 189"
    assert exact_match("€189.", ("€189",)) and exact_match("The Tampere office", ("tampere office",))
    assert not exact_match("It costs €189.", ("€189",))
    assert token_f1("It costs €189.", ("€189",)) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("nothing here", ("€189",)) == 0.0
    assert is_one_sentence("It costs €189 [2].") and not is_one_sentence("It costs €189. It is cheap.")


@pytest.fixture(scope="module")
def comparison(generator_model_path, embedder_dir, tiny_finetune, tmp_path_factory):
    report, _ = tiny_finetune
    kb = KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir), chunk_tokens=160, overlap_tokens=24)
    # Two trained facts, one fact the v2 documents change (the Brookling B3 price) and one of an unseen document
    # (two wordings).
    subset = [q for q in QUESTIONS if q.fact_id in ("F001", "F002", "F071", "F188")]
    config = CompareConfig(train_per_fact=1, timing_questions=2, repetitions=1, warmup=0, max_tokens=16,
                           splice_questions=2)
    phases = []
    with Engine(generator_model_path, adapter=report.adapter_path, kb=kb, n_ctx=1024,
                kv_cache=ChunkKvCache(None)) as engine:
        engine.__class__ = _KbFixed
        result = run_comparison(engine, subset, config=config, docs_dir=BUNDLED_SET / "docs",
                                work_dir=tmp_path_factory.mktemp("fresh") / "work",
                                progress=lambda phase, done, total: phases.append(phase))
    return result, phases, tmp_path_factory.mktemp("report")


def test_every_mode_graded_on_every_split(comparison):
    result, phases, _ = comparison
    for mode in ("rag", "baked", "hybrid"):
        # after update: every wording of the changed fact (F071), not only the graded ones
        assert result.counts[mode] == {"train": 3, "heldout": 3, "updated": 4, "unseen": 2}
        assert set(result.accuracy[mode]) == {"train", "heldout", "updated", "unseen"}
        assert {f"accuracy/{mode}", f"latency/{mode}", f"freshness/{mode}"} <= set(phases)
    for mode in ("rag", "hybrid"):
        assert all(a.cited_sources for a in result.answers if a.mode == mode), "every answer cites its passages"
    assert all(not a.cited_sources for a in result.answers if a.mode == "baked")
    unseen = next(a for a in result.answers if a.mode == "hybrid" and a.split == "unseen")
    assert "glimmerpool-g2-pond-light-manual.md" in unseen.cited_sources, "the unseen document is retrieved"


def test_the_readers_are_probed_on_edited_values_and_removed_passages(comparison):
    result, phases, _ = comparison
    assert set(result.follows) == set(result.abstains) == {"rag", "hybrid", "hybrid-spliced"}
    edited = [a for a in result.answers if a.split == "edited"]
    removed = [a for a in result.answers if a.split == "removed"]
    for label, row in result.follows.items():
        mine = [a for a in edited if a.mode == label]
        # F002's answer (the founder) stands in several documents: not editable, counted below
        assert row["n"] == len(mine) == 4, "the graded questions of F001 and F071, each edited"
        assert row["passage"] == sum(a.correct for a in mine) / len(mine)
        assert 0 <= row["old"] <= 1 - row["passage"]
        assert all(a.cited_sources for a in mine), "answered from the edited copy's hits"
    for label, row in result.abstains.items():
        mine = [a for a in removed if a.mode == label]
        assert row["n"] == len(mine) > 0
        assert abs(row["abstained"] + row["memory"] + row["wrong"] - 1) < 1e-9
    # the removed copy lacks every other source document: no removed question cites its own
    sources = {q.id: q.source.split("/")[1] for q in QUESTIONS}
    assert all(sources[a.question_id] not in a.cited_sources for a in removed)
    assert {"edited/hybrid", "removed/hybrid-spliced"} <= set(phases)
    assert result.edit_skips == {"answer in several documents": 1}


def test_the_setup_cost_of_a_change_is_the_reindex_measured_here(comparison):
    result, _, _ = comparison
    assert set(result.setup_seconds) == {"reindex"}, "no training time was given to the comparison"
    assert 0 < result.setup_seconds["reindex"] < result.seconds
    assert "(reindex)" in summary_table(result)


def test_trained_facts_are_answered_by_the_adapter(comparison):
    result, _, _ = comparison
    baked_train = [a for a in result.answers if a.mode == "baked" and a.split == "train" and a.fact_id != "F071"]
    assert all(a.correct for a in baked_train), [a.answer for a in baked_train]


def test_latency_is_summarised_per_mode(comparison):
    result, _, _ = comparison
    for mode in ("rag", "baked"):
        latency = result.latency[mode]
        assert latency.samples == 2
        assert 0 < latency.ttft_p50_ms <= latency.ttft_p95_ms
        assert latency.ttft_p50_ms <= latency.total_p50_ms
    assert list(result.latency["rag"].stage_p50_ms) == list(STAGES)
    assert result.latency["rag"].stage_p50_ms["search.embed_ms"] > 0
    assert result.latency["baked"].stage_p50_ms["search.embed_ms"] == 0, "baked mode searches nothing"
    assert result.latency["baked"].stage_p50_ms["generation.prefill_ms"] > 0
    assert result.latency["rag"].prompt_tokens_p50 > result.latency["baked"].prompt_tokens_p50
    assert result.ttft_ratio_rag_over_baked == pytest.approx(
        result.latency["rag"].ttft_p50_ms / result.latency["baked"].ttft_p50_ms)


def test_every_mode_is_graded_three_ways_with_its_format(comparison):
    result, _, _ = comparison
    assert {"rag", "baked", "hybrid", "rag-prefill", "rag-spliced", "hybrid-prefill", "hybrid-spliced"} \
        <= set(result.grading)
    assert {"exact", "f1", "one_sentence", "cites_label", "citation_precision", "format"} \
        == set(result.grading["rag"]) == set(result.grading["hybrid"])
    assert "cites_label" not in result.grading["baked"], "the baked mode has no passages to cite"
    baked = [a for a in result.answers if a.mode == "baked"]
    assert result.grading["baked"]["format"] == sum(a.one_sentence for a in baked) / len(baked)
    rag = [a for a in result.answers if a.mode == "rag"]
    assert result.grading["rag"]["format"] == sum(a.one_sentence and a.cites_label for a in rag) / len(rag)
    for answer in result.answers:
        assert answer.f1 >= float(answer.exact) and 0.0 <= answer.f1 <= 1.0


def test_splicing_is_graded_on_the_same_passages_and_timed_warm_and_cold_beside_full_prefill(comparison):
    result, phases, _ = comparison
    assert {"accuracy/rag-prefill", "accuracy/rag-spliced", "latency/rag-spliced", "latency/rag-spliced-cold"} \
        <= set(phases)
    for label in ("rag-prefill", "rag-spliced", "hybrid-prefill", "hybrid-spliced"):
        assert sum(result.counts[label].values()) == 2
    variants = [{a.question_id: a for a in result.answers if a.mode == label and a.split in ("train", "heldout")}
                for label in ("rag-prefill", "rag-spliced", "hybrid-prefill", "hybrid-spliced")]
    assert all(v.keys() == variants[0].keys() for v in variants)
    assert all(len({v[q].cited_sources for v in variants}) == 1 for q in variants[0]), "the same passages"
    assert result.latency["hybrid-spliced"].stage_p50_ms["generation.splice_ms"] > 0
    assert result.latency["hybrid"].stage_p50_ms["generation.splice_ms"] == 0
    # The rag row is full prefill even though the engine has a chunk-KV cache.
    assert result.latency["rag"].stage_p50_ms["generation.splice_ms"] == 0
    assert result.latency["rag"].stage_p50_ms["kv_ms"] == 0
    assert result.latency["rag-spliced"].stage_p50_ms["generation.splice_ms"] > 0
    assert result.latency["rag-spliced-cold"].stage_p50_ms["kv_ms"] > 0
    assert 0 <= result.kv_cache["hit_rate"] <= 1 and result.kv_cache["bytes_per_token"] > 0
    assert result.ttft_ratio_spliced_over_baked == pytest.approx(
        result.latency["rag-spliced"].ttft_p50_ms / result.latency["baked"].ttft_p50_ms)


def test_the_spliced_prefill_is_split_next_to_bakeds(comparison):
    result, _, out = comparison
    for mode in ("rag-spliced", "hybrid-spliced", "rag-spliced-cold"):
        split = result.latency[mode].prefill_split_p50_ms
        assert list(split) == list(PREFILL_SPLIT) and split["prefill.question_ms"] > 0
        assert sum(split.values()) == pytest.approx(result.latency[mode].stage_p50_ms["generation.prefill_ms"])
    baked = result.latency["baked"]
    assert baked.prefill_split_p50_ms == {"prefill.question_ms": baked.stage_p50_ms["generation.prefill_ms"],
                                          "prefill.spliced_positions_ms": 0.0}, "baked prefills its own tokens only"
    assert result.latency["rag"].prefill_split_p50_ms == {} == result.latency["hybrid"].prefill_split_p50_ms
    stages = write_report(result, out).markdown_path.read_text().split("## Latency per stage")[1].split("##")[0]
    own = next(line for line in stages.splitlines() if "the question's own tokens" in line)
    assert "n/a" in own and own.count("|") == len(result.latency) + 2, "a cell per timed mode, n/a for full prefill"


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
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.partial"))


def test_context_recall_is_reported_for_rag(comparison):
    result, _, _ = comparison
    assert set(result.context_recall) == {"train", "heldout", "updated", "unseen"}
    rag = [a for a in result.answers if a.mode == "rag"]
    assert all(a.answer_in_context is not None for a in rag)
    assert all(a.answer_in_context is None for a in result.answers if a.mode == "baked")
    # an answer that contains the accepted string with its passage missing would be a guess
    assert 0.0 <= min(result.context_recall.values()) <= max(result.context_recall.values()) <= 1.0


def test_reader_is_measured_with_perfect_retrieval(comparison):
    result, phases, _ = comparison
    assert READER_MODE in READER_MODES and set(READER_MODES.values()) == {"rag", "hybrid"}
    subset = {q.id: q for q in QUESTIONS}
    for label in READER_MODES:
        reader = [a for a in result.answers if a.mode == label]
        assert [a.split for a in reader] == ["heldout"] * 3
        assert f"accuracy/{label}" in phases
        for a in reader:
            assert a.cited_sources == (subset[a.question_id].source.rsplit("/", 1)[-1],)
        assert result.reader_accuracy[label]["heldout"] == sum(a.correct for a in reader) / 3
        assert result.counts[label] == {"heldout": 3}
    assert sum("perfect retrieval" in p for p in retrieval_vs_reader(result)) == 2


@pytest.fixture(scope="module")
def bundled_kb(embedder_dir, tmp_path_factory):
    with KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir)) as kb:
        yield kb


def test_every_heldout_answer_sits_inside_one_chunk_of_its_source(bundled_kb):
    """The perfect-retrieval measurement needs a passage for every held-out question."""
    for q in (q for q in QUESTIONS if q.split == "heldout"):
        passage = answer_passage(bundled_kb, q)
        assert passage is not None, q.id
        assert passage.source.endswith(q.source.rsplit("/", 1)[-1]) and is_correct(f"{passage.heading}\n{passage.text}", q.answers)


# ---- without models: a stand-in engine that answers from given passages


_GENERATION = GenerationTimings(
    tokenize_ms=0.0, prompt_tokens=50, truncated_tokens=0, reused_tokens=0, prefill_ms=10.0, prefill_tokens=50,
    prefill_tokens_per_s=5000.0, ttft_ms=11.0, decode_ms=20.0, decode_tokens=4, decode_tokens_per_s=200.0,
    total_ms=31.0, backend="CPU", devices=("CPU",), n_gpu_layers_offloaded=0, extra_buffer_types=False)
_SEARCH = SearchTimings(embed_ms=2.0, dense_search_ms=0.5, lexical_search_ms=0.25, scoring_ms=0.125, total_ms=3.0)


class _StandIn:
    """Answers "I do not know." in both modes; in "rag" mode it was shown one passage that holds the answer,
    from a source file that does not exist: grading must use what the model was shown, not re-read the file."""

    modes = ("rag", "baked")
    kb = None

    kv_cache = None

    def ask(self, question, mode="rag", *, max_tokens=48, passages=None, splice=None):
        citations = ()
        if mode == "rag":
            q = next(q for q in QUESTIONS if q.question == question)
            citations = (Citation(1, "/nowhere/gone.md", 7, (0, 40), "Prices", f"It is {q.answers[0]}.", False),)
        timings = AnswerTimings(search=_SEARCH if mode == "rag" else None, generation=_GENERATION,
                                retrieval_ms=4.0 if mode == "rag" else 0.0, prompt_build_ms=1.0,
                                ttft_ms=16.0, total_ms=36.0)
        return Answer(question, "I do not know.", mode, citations, timings, "eos")


def test_context_recall_reads_what_the_model_was_shown_not_the_file():
    config = CompareConfig(limit_facts=2, timing_questions=1, repetitions=1, warmup=0, freshness=False,
                           answer_passage=False, unseen_facts=0)
    result = run_comparison(_StandIn(), QUESTIONS, config=config)
    rag = [a for a in result.answers if a.mode == "rag"]
    assert rag and all(a.answer_in_context for a in rag) and not any(a.correct for a in rag)
    assert result.context_recall == {"train": 1.0, "heldout": 1.0}
    assert all(a.cited_sources == ("gone.md",) for a in rag)


def test_stages_come_from_the_composed_timings():
    rag = _StandIn().ask(QUESTIONS[0].question, "rag").timings
    baked = _StandIn().ask(QUESTIONS[0].question, "baked").timings
    assert [stage_ms(rag, s) for s in STAGES] == [2.0, 0.5, 0.25, 0.125, 1.0, 0.0, 0.0, 10.0, 20.0]
    assert [stage_ms(baked, s) for s in STAGES] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 10.0, 20.0]
    result = run_comparison(_StandIn(), QUESTIONS, config=CompareConfig(
        limit_facts=1, timing_questions=2, repetitions=2, warmup=0, freshness=False, answer_passage=False))
    assert result.latency["rag"].stage_p50_ms["search.embed_ms"] == 2.0
    assert result.latency["baked"].prompt_tokens_p50 == 50 and result.latency["baked"].decode_tokens_p50 == 4


@pytest.mark.parametrize(("setting", "said"), [
    ({"repetitions": 0}, "repetitions must be an integer >= 1"),
    ({"timing_questions": 0}, "timing_questions must be an integer >= 1"),
    ({"limit_facts": 0}, "limit_facts must be None"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer"),
], ids=["repetitions", "timing", "facts", "max_tokens"])
def test_a_setting_a_comparison_cannot_run_with_is_an_input_error(setting, said):
    with pytest.raises(InputError, match=said):
        run_comparison(_StandIn(), QUESTIONS, config=CompareConfig(**setting))


def test_an_engine_without_both_modes_is_refused_before_any_question():
    baked_only = SimpleNamespace(modes=("baked",), kb=None)
    with pytest.raises(InputError, match="no rag mode: give Engine"):
        run_comparison(baked_only, QUESTIONS, config=CompareConfig(limit_facts=1))
