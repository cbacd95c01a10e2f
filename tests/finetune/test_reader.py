"""Reader examples (RAFT-style) and block attention: what the recipe trains the hybrid reader on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from engine.embedding.embedder import Embedder  # noqa: E402
from engine.errors import InputError  # noqa: E402
from engine.facade import Engine  # noqa: E402
from engine.finetune.config import FinetuneConfig  # noqa: E402
from engine.finetune.gguf_weights import load_base  # noqa: E402
from engine.finetune.reader import cited_target, reader_examples  # noqa: E402
from engine.finetune.recipe import finetune  # noqa: E402
from engine.finetune.torch_model import BlockLayout, LlamaModel  # noqa: E402
from engine.generation.chat import NOT_IN_SOURCES  # noqa: E402
from engine.generation.tokenizer import Tokenizer  # noqa: E402
from engine.kb import KnowledgeBase  # noqa: E402
from engine.kb.ranking import MMR_LAMBDA  # noqa: E402
from engine.questions.qa import BUNDLED_SET, is_correct, load_questions, select_facts, unseen_documents  # noqa: E402

QUESTIONS = load_questions(BUNDLED_SET / "qa.jsonl")
UNSEEN = unseen_documents(BUNDLED_SET)


@pytest.fixture(scope="module")
def bundled_kb(embedder_dir, tmp_path_factory):
    with KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir)) as kb:
        yield kb


@pytest.fixture(scope="module")
def reading_kb(embedder_dir, tmp_path_factory):
    """The bundled set's knowledge base for the counterfactual tests (an Engine closes the one it was given)."""
    with KnowledgeBase.build(BUNDLED_SET / "docs", tmp_path_factory.mktemp("kb") / "kb",
                             embedder=Embedder(embedder_dir)) as kb:
        yield kb


@pytest.fixture(scope="module")
def tokenizer(generator_model_path):
    return Tokenizer(generator_model_path)


def _train(n_facts: int):
    return [q for q in select_facts(QUESTIONS, n_facts, spread=True) if q.split == "train"]


def _examples(kb, tokenizer, items, **overrides):
    settings = dict(passages=3, distractor_share=0.3, block_share=0.5, mmr_lambda=MMR_LAMBDA, max_tokens=768,
                    excluded_sources=UNSEEN, seed=0)
    return reader_examples(items, kb, tokenizer, **{**settings, **overrides})


def test_gold_examples_cite_the_passage_that_holds_the_answer_and_the_others_say_so(bundled_kb, tokenizer):
    items = _train(12)
    made = _examples(bundled_kb, tokenizer, items)
    assert len(made.examples) + made.skipped == len(items) and made.skipped == 0
    assert 0 < made.distractors_only < len(made.examples) and 0 < made.spliced < len(made.examples)
    for example in made.examples:
        prompt = tokenizer.decode(example.tokens[: example.n_context])
        target = tokenizer.decode(example.tokens[example.n_context:])
        sources = prompt.split("Sources:", 1)[1].rsplit("Question:", 1)[0]
        assert sources.count('"""') == 6, "three passages"
        assert not any(name in prompt for name in UNSEEN), "unseen documents are never shown"
        item = next(i for i in items if f"Question: {i.question}" in prompt)
        if target.startswith(NOT_IN_SOURCES):
            assert not is_correct(sources, item.answers), "distractors only: no passage holds the answer"
        else:
            label = target.rsplit("[", 1)[1].split("]")[0]
            assert target == cited_target(item.answers[0], int(label)) + tokenizer.chat.end_of_turn
            cited = sources.split(f"[{label}] ", 1)[1].split('"""\n', 2)[1]
            assert is_correct(cited, item.answers), "the cited passage holds the answer"
        assert (example.kind == "reader-blocks") == bool(example.blocks)


def test_reader_prompts_are_the_tokens_the_engine_sends(bundled_kb, tokenizer, generator_model_path):
    items = _train(6)
    made = _examples(bundled_kb, tokenizer, items, distractor_share=0.0, block_share=0.5)
    assert {e.kind for e in made.examples} == {"reader", "reader-blocks"}
    with Engine(generator_model_path, kb=bundled_kb, k=3) as engine:
        for example in made.examples:
            prompt = tokenizer.decode(example.tokens[: example.n_context])
            item = next(i for i in items if f"Question: {i.question}" in prompt)
            shown = [h for h in bundled_kb.search(item.question, k=50).hits if f"\n{h.text.strip()}\n" in prompt]
            shown.sort(key=lambda h: prompt.index(h.text.strip()))
            splice = "prefill" if example.blocks else "off"
            prepared, _ = engine._prepare(item.question, "rag", 48, shown, splice)
            assert prepared.tokens == example.tokens[: example.n_context]
            if example.blocks:
                assert tuple((b.start, len(b.tokens)) for b in prepared.blocks) == example.blocks
                assert len(prepared.prefix) == example.prefix_len


def test_a_block_attends_to_the_prefix_and_itself_at_the_position_its_state_was_made(generator_model_path):
    """Block attention against the direct computation: a block's hidden states equal those of
    [prefix][block] evaluated alone, and a token after the blocks sees every block."""
    base = load_base(generator_model_path)
    model = LlamaModel(base, None)
    prefix, first, second, tail = [1, 520, 3358, 28], [4430, 314, 2032, 30], [5113, 1670, 47, 16, 198], [906, 30]
    tokens = torch.tensor([prefix + first + second + tail])
    blocks = BlockLayout.of(tokens.shape[1], [(len(prefix), ((4, 4), (8, 5)))])
    with torch.no_grad():
        spliced = model.hidden(tokens, blocks)
        alone = model.hidden(torch.tensor([prefix + second]))
        causal = model.hidden(tokens)
    torch.testing.assert_close(spliced[0, 8:13], alone[0, 4:9], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spliced[0, :8], causal[0, :8], rtol=1e-4, atol=1e-4)  # the first block is exact
    assert not torch.allclose(spliced[0, -1], causal[0, -1], atol=1e-3), "the second block did not see the first"


def test_the_recipe_needs_a_knowledge_base_for_reader_examples(kb_dir, generator_model_path, tmp_path):
    with pytest.raises(InputError, match="pass kb="):
        finetune(kb_dir / "docs", kb_dir / "qa.jsonl", generator_model_path, tmp_path / "a.gguf",
                 config=FinetuneConfig(limit_facts=2))
    with pytest.raises(InputError, match="reader_per_fact"):
        finetune(kb_dir / "docs", kb_dir / "qa.jsonl", generator_model_path, tmp_path / "a.gguf",
                 config=dataclasses.replace(FinetuneConfig(), reader_per_fact=-1.0))
    assert not (tmp_path / "a.gguf").exists()


def test_unseen_documents_are_never_trained_on(kb_dir, tokenizer):
    from engine.finetune.data import document_examples

    windows = document_examples(kb_dir / "docs", tokenizer, max_tokens=160, exclude=UNSEEN)
    every = document_examples(kb_dir / "docs", tokenizer, max_tokens=160)
    assert len(windows) < len(every)
    names = {Path(q.source).name: q for q in QUESTIONS if q.split == "unseen"}
    assert set(names) == UNSEEN
    for window in windows:
        text = tokenizer.decode(window.tokens)
        assert not any(is_correct(text, q.answers) for q in QUESTIONS if q.split == "unseen"), text[:80]
    assert all(q.split != "unseen" for q in select_facts(QUESTIONS, None))


def test_reader_questions_are_spread_over_the_facts():
    from engine.finetune.reader import choose_reader_questions

    items = _train(20)
    for per_fact, facts in ((0.25, 5), (1.0, 20), (1.5, 20), (3.0, 20), (9.0, 20)):
        chosen = choose_reader_questions(items, per_fact, seed=0)
        assert len(chosen) == min(round(per_fact * 20), len(items)) == len({q.id for q in chosen})
        assert len({q.fact_id for q in chosen}) == facts
    half = choose_reader_questions(items, 1.5, seed=0)
    assert max(sum(q.fact_id == f for q in half) for f in {q.fact_id for q in half}) == 2
    assert choose_reader_questions(items, 1.5, seed=0) == half != choose_reader_questions(items, 1.5, seed=1)


def test_counterfactual_examples_answer_the_passage_value_which_no_document_holds(reading_kb, tokenizer, kb_dir):
    from engine.questions.edits import Corpus

    corpus = Corpus(kb_dir / "docs")
    items = _train(16)
    made = _examples(reading_kb, tokenizer, items, distractor_share=0.0, block_share=0.5, counterfactual_share=1.0,
                     corpus=corpus)
    assert made.counterfactual + made.not_edited == made.with_gold == len(made.examples)
    assert made.counterfactual >= 0.6 * len(items), "most values have a same-kind replacement"
    edited = 0
    for example in made.examples:
        prompt = tokenizer.decode(example.tokens[: example.n_context])
        target = tokenizer.decode(example.tokens[example.n_context:])
        item = next(i for i in items if f"Question: {i.question}" in prompt)
        value = target.rsplit(" [", 1)[0]
        label = target.rsplit("[", 1)[1].split("]")[0]
        cited = prompt.split(f"[{label}] ", 1)[1].split('"""', 2)[1]
        if not is_correct(value, item.answers):
            edited += 1
            assert value in cited, "the target is the value the cited passage shows"
            assert not corpus.taken(value), f"{value!r} is in a document: memory could answer it"
            sources = prompt.split("Sources:", 1)[1] if "Sources:" in prompt else prompt
            assert not is_correct(sources, item.answers[:1]), "the old value is gone from every passage"
    assert edited == made.counterfactual


def test_reading_practice_comes_from_facts_the_adapter_is_not_trained_on(reading_kb, tokenizer, kb_dir):
    from engine.finetune.recipe import _practice_questions
    from engine.questions.edits import Corpus

    items = _train(16)
    practice = _practice_questions(QUESTIONS, items, dataclasses.replace(FinetuneConfig(), practice_per_fact=0.5))
    trained = {q.fact_id for q in items}
    assert len(practice) == 8 and not trained & {q.fact_id for q in practice}
    assert all(q.split == "train" and Path(q.source).name not in UNSEEN for q in practice)
    assert len({q.source for q in practice}) == 8, "spread over the documents"
    made = _examples(reading_kb, tokenizer, [], distractor_share=0.0, practice=practice,
                     corpus=Corpus(kb_dir / "docs"))
    assert made.practice == len(made.examples) == 8 - made.skipped >= 5
    with pytest.raises(InputError, match="corpus"):
        _examples(reading_kb, tokenizer, [], practice=practice)
