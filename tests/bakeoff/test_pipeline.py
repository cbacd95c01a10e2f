"""``bakeoff run``'s pipeline: the spread subset, the adapter fingerprint, and a whole run on a tiny set."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from engine.bakeoff import pipeline
from engine.bakeoff.compare import CompareConfig
from engine.bakeoff.pipeline import (
    PHASES,
    QUICK,
    RunProfile,
    RunProgress,
    adapter_fingerprint,
    adapter_is_current,
    run_bakeoff,
)
from engine.errors import InputError
from engine.finetune.config import FinetuneConfig
from engine.kb import KnowledgeBase
from engine.questions.qa import BUNDLED_SET, load_questions, select_facts, unseen_documents, unseen_questions

QUESTIONS = load_questions(BUNDLED_SET / "qa.jsonl")
TRAINED = [q for q in QUESTIONS if q.split != "unseen"]  # the facts of the documents fine-tuning may see


def test_the_quick_profile_spreads_over_documents_and_covers_every_split_and_update():
    chosen = select_facts(QUESTIONS, QUICK.compare.limit_facts, spread=True)
    assert len({q.source for q in chosen}) == len({q.fact_id for q in chosen}) == QUICK.compare.limit_facts, \
        "one fact per document"
    assert {q.source for q in chosen} <= {q.source for q in TRAINED}
    assert {"train", "heldout"} <= {q.split for q in chosen}
    assert any(q.changes_on_update for q in chosen)
    assert QUICK.finetune.limit_facts == QUICK.compare.limit_facts
    assert QUICK.finetune.spread_facts and QUICK.compare.spread_facts
    unseen = unseen_questions(QUESTIONS, QUICK.compare.unseen_facts)
    assert len(unseen) == QUICK.compare.unseen_facts
    assert {Path(q.source).name for q in unseen} == unseen_documents(BUNDLED_SET), "spread over every unseen document"


def test_the_standard_profile_grades_at_least_100_questions_on_every_split():
    from engine.bakeoff.compare import select_questions
    from engine.bakeoff.pipeline import STANDARD

    graded = select_questions(QUESTIONS, STANDARD.compare)
    facts = {q.fact_id for q in graded}
    assert sum(q.split == "train" for q in graded) >= 100 and sum(q.split == "heldout" for q in graded) >= 100
    assert sum(q.fact_id in facts and q.changes_on_update for q in QUESTIONS) >= 100, "after update"
    assert len(unseen_questions(QUESTIONS, STANDARD.compare.unseen_facts)) >= 100
    assert STANDARD.compare.probe_questions is not None and STANDARD.compare.probe_questions >= 100
    assert STANDARD.finetune.limit_facts == STANDARD.compare.limit_facts


def test_no_selection_takes_a_question_of_an_unseen_document():
    unseen = unseen_documents(BUNDLED_SET)
    assert len(unseen) >= 5
    for limit, spread in ((None, False), (40, True), (1000, True), (1000, False)):
        assert all(q.split != "unseen" and Path(q.source).name not in unseen
                   for q in select_facts(QUESTIONS, limit, spread=spread))
    assert {q.split for q in unseen_questions(QUESTIONS)} == {"unseen"}
    assert len({q.fact_id for q in unseen_questions(QUESTIONS)}) >= 35


def test_spread_takes_facts_a_v2_update_changes_first_within_each_document():
    changed_sources = {q.source for q in QUESTIONS if q.changes_on_update}
    one_per_document = select_facts(QUESTIONS, len({q.source for q in TRAINED}), spread=True)
    for source in changed_sources:
        picked = {q.fact_id for q in one_per_document if q.source == source}
        assert all(q.changes_on_update for q in one_per_document if q.fact_id in picked), source


def test_without_spread_the_first_facts_are_kept():
    assert {q.fact_id for q in select_facts(QUESTIONS, 3)} == {"F001", "F002", "F003"}
    assert select_facts(QUESTIONS, None) == TRAINED
    assert select_facts(QUESTIONS, 5, spread=True) == select_facts(QUESTIONS, 5, spread=True)


def _knowledge_set(root: Path, sources: set[str]) -> Path:
    """A small knowledge set laid out like the bundled one: its documents, their updates, their questions."""
    (root / "docs").mkdir(parents=True)
    (root / "updates").mkdir()
    for source in sources:
        shutil.copyfile(BUNDLED_SET / source, root / source)
        update = BUNDLED_SET / "updates" / Path(source).name
        if update.is_file():
            shutil.copyfile(update, root / "updates" / update.name)
    lines = [line for line in (BUNDLED_SET / "qa.jsonl").read_text(encoding="utf-8").splitlines()
             if any(f'"source": "{s}"' in line for s in sources)]
    (root / "qa.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_the_fingerprint_follows_documents_questions_and_every_setting(tmp_path, generator_model_path):
    kset = _knowledge_set(tmp_path / "set", {"docs/company-overview.md", "docs/price-list-2025.md"})
    docs, qa = kset / "docs", kset / "qa.jsonl"
    config = FinetuneConfig(limit_facts=3)
    first = adapter_fingerprint(config, docs, qa, generator_model_path)
    assert adapter_fingerprint(config, docs, qa, generator_model_path) == first
    assert adapter_fingerprint(dataclasses.replace(config, lr=1e-3), docs, qa, generator_model_path) != first
    assert adapter_fingerprint(dataclasses.replace(config, spread_facts=True), docs, qa,
                               generator_model_path) != first
    with open(docs / "company-overview.md", "a", encoding="utf-8") as handle:
        handle.write("\nFenwhistle also runs a small museum.\n")
    changed_doc = adapter_fingerprint(config, docs, qa, generator_model_path)
    assert changed_doc != first
    (docs / "new.md").write_text("# New\n\nA new document.\n", encoding="utf-8")
    added = adapter_fingerprint(config, docs, qa, generator_model_path)
    assert added != changed_doc
    (docs / "sub").mkdir()
    (docs / "new.md").rename(docs / "sub" / "new.md")
    moved = adapter_fingerprint(config, docs, qa, generator_model_path)
    assert moved != added, "a document's place in the folder counts"
    (kset / "set.json").write_text('{"subject": "Fenwhistle pumps"}', encoding="utf-8")
    subject = adapter_fingerprint(config, docs, qa, generator_model_path)
    assert subject != moved, "set.json names the subject of the system prompt the adapter is trained with"
    with open(qa, "a", encoding="utf-8") as handle:
        handle.write("\n")
    assert adapter_fingerprint(config, docs, qa, generator_model_path) != subject


def test_a_changed_document_makes_a_stamped_adapter_stale(tmp_path, generator_model_path):
    kset = _knowledge_set(tmp_path / "set", {"docs/company-overview.md", "docs/price-list-2025.md"})
    docs, qa = kset / "docs", kset / "qa.jsonl"
    config = FinetuneConfig(limit_facts=3)
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF stand-in")
    fingerprint = adapter_fingerprint(config, docs, qa, generator_model_path)
    (tmp_path / "adapter.gguf.fingerprint").write_text(fingerprint)
    assert adapter_is_current(adapter, adapter_fingerprint(config, docs, qa, generator_model_path))
    with open(docs / "price-list-2025.md", "a", encoding="utf-8") as handle:
        handle.write("\nGift cards are sold in every shop.\n")
    assert not adapter_is_current(adapter, adapter_fingerprint(config, docs, qa, generator_model_path))


def test_a_folder_that_is_not_a_knowledge_set_is_refused_before_any_work(tmp_path, tiny_profile):
    (tmp_path / "set" / "docs").mkdir(parents=True)
    with pytest.raises(InputError, match="is not a knowledge set: it needs docs/ and qa.jsonl"):
        run_bakeoff(tmp_path / "work", tiny_profile, knowledge_set=tmp_path / "set")
    with pytest.raises(InputError, match="no question file"):
        adapter_fingerprint(tiny_profile.finetune, tmp_path / "set" / "docs", tmp_path / "set" / "qa.jsonl",
                            tmp_path / "model.gguf")
    bad = dataclasses.replace(tiny_profile, compare=dataclasses.replace(tiny_profile.compare, repetitions=0))
    with pytest.raises(InputError, match="repetitions must be an integer >= 1"):
        run_bakeoff(tmp_path / "work", bad, knowledge_set=BUNDLED_SET)
    assert not (tmp_path / "work").exists()


def test_the_run_knowledge_base_holds_exactly_the_set_documents(tmp_path, embedder_dir):
    first = _knowledge_set(tmp_path / "a", {"docs/company-overview.md", "docs/price-list-2025.md"})
    second = _knowledge_set(tmp_path / "b", {"docs/price-list-2025.md", "docs/warranty-terms.md"})
    kb_dir = tmp_path / "work" / "kb"
    pipeline._index(first / "docs", kb_dir, RunProgress())
    pipeline._index(second / "docs", kb_dir, RunProgress())
    with KnowledgeBase.open(kb_dir) as kb:
        assert kb.sources() == sorted(str(p) for p in (second / "docs").iterdir()), \
            "another set's documents are dropped, the same text under a new path is kept"
    (second / "docs" / "warranty-terms.md").unlink()
    pipeline._index(second / "docs", kb_dir, RunProgress())
    with KnowledgeBase.open(kb_dir) as kb:
        assert [Path(s).name for s in kb.sources()] == ["price-list-2025.md"]


class _Recorder(RunProgress):
    def __init__(self) -> None:
        self.phases: list[tuple[int, str, float]] = []
        self.messages: list[str] = []
        self.train_steps = 0

    def phase(self, index, name, elapsed_s, eta_s):
        self.phases.append((index, name, eta_s))

    def message(self, text):
        self.messages.append(text)

    def train(self, progress):
        self.train_steps += 1


_BRIEF_COMPARE = CompareConfig(limit_facts=1, spread_facts=True, timing_questions=1, repetitions=1, warmup=0,
                               max_tokens=8, freshness=False, answer_passage=False, splice=False, splice_cold=False,
                               probe=False)


@pytest.fixture(scope="module")
def tiny_profile() -> RunProfile:
    return RunProfile(
        "tiny",
        FinetuneConfig(limit_facts=2, spread_facts=True, epochs=3, batch_size=6, use_documents=False,
                       reader_per_fact=1.0),
        # The reading probes, the perfect-retrieval reader and the cold timing are test_compare's; the run keeps
        # freshness and splicing, so its report holds the update and the spliced rows with their prefill split.
        CompareConfig(limit_facts=2, spread_facts=True, timing_questions=1, repetitions=1, warmup=1, max_tokens=16,
                      answer_passage=False, splice_cold=False, probe=False),
        estimates_s=(1.0, 2.0, 30.0, 60.0),
    )


def test_a_run_trains_then_reuses_the_adapter_until_a_document_changes(tmp_path, tiny_profile, embedder_dir):
    pytest.importorskip("torch")
    kset = _knowledge_set(tmp_path / "set", {"docs/company-overview.md", "docs/price-list-2025.md"})
    work = tmp_path / "work"

    first_progress = _Recorder()
    first = run_bakeoff(work, tiny_profile, threads=1, knowledge_set=kset, progress=first_progress)
    assert not first.adapter_reused and first_progress.train_steps > 0
    assert [p[1] for p in first_progress.phases] == list(PHASES)
    assert first_progress.phases[2][2] > 0, "the fine-tune phase is in the ETA when it will train"
    assert first.files.markdown_path.is_file() and first.adapter.is_file()
    attention = next(m for m in first_progress.messages if m.startswith("attention: "))
    assert "auto: " in attention and "flash off: " in attention, "the probe's times are said"
    assert f"- {attention}" in first.files.markdown_path.read_text(), "and written beside the thread choice"
    assert set(first.phase_seconds) == set(PHASES)
    for mode in ("rag", "baked", "hybrid"):
        assert first.result.counts[mode]["heldout"] == 2 and first.result.counts[mode]["train"] == 2
        assert first.result.counts[mode]["updated"] >= 1, "the price list's update is graded"
    setup = first.result.setup_seconds
    assert setup["reindex"] > 0 and setup["retrain"] > setup["reindex"], "both ways of absorbing a change are timed"

    # The runs after the first show reuse and retraining: the same profile (its fine-tune settings are in the
    # fingerprint), with the comparison cut to one fact answered plainly and flash attention as given.
    brief = dataclasses.replace(tiny_profile, compare=_BRIEF_COMPARE)
    again = _Recorder()
    second = run_bakeoff(work, brief, threads=1, flash_attn=False, knowledge_set=kset, progress=again)
    assert second.adapter_reused and again.train_steps == 0
    assert any("reusing the adapter" in m for m in again.messages)
    assert "attention: flash off, as given" in again.messages
    assert again.phases[2][2] == again.phases[3][2], "a reused adapter takes no time in the ETA"

    with open(kset / "docs" / "price-list-2025.md", "a", encoding="utf-8") as handle:
        handle.write("\nGift cards are sold in every shop.\n")
    third = run_bakeoff(work, brief, threads=1, flash_attn=False, knowledge_set=kset, progress=_Recorder())
    assert not third.adapter_reused, "the adapter was trained on the documents: a changed one retrains it"
