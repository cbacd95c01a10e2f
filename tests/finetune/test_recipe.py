"""The recipe end to end on a tiny configuration: five facts of the bundled knowledge set."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.finetune.config import FinetuneConfig  # noqa: E402
from engine.errors import InputError  # noqa: E402
from engine.finetune.data import Example, Tokenizer, document_examples, load_qa, qa_examples  # noqa: E402
from engine.qa import select_facts  # noqa: E402
from engine.finetune.evaluate import LlamaCppScorer, evaluate, trained_answer_logprob  # noqa: E402
from engine.finetune.model import LlamaModel  # noqa: E402
from engine.finetune.prompt import BAKED_SYSTEM_PROMPT, render_chat  # noqa: E402
from engine.finetune.recipe import FinetuneReport, finetune  # noqa: E402
from engine.finetune.train import TrainProgress, train_lora  # noqa: E402

TINY = FinetuneConfig(limit_facts=5, batch_size=5, epochs=8, stop_loss=0.05, use_documents=False)


@pytest.fixture(scope="module")
def tiny_run(kb_dir, tiny_finetune):
    """The tiny configuration, trained once per session (tests/conftest.py); its progress reports."""
    report, steps = tiny_finetune
    assert report.config == TINY, "tests/conftest.py trains the same tiny configuration"
    items = select_facts(load_qa(kb_dir / "qa.jsonl"), TINY.limit_facts)
    return report, steps, items


def test_report_and_progress_describe_the_run(tiny_run):
    report, steps, _ = tiny_run
    assert isinstance(report, FinetuneReport)
    assert report.n_facts == 5 and report.n_qa_examples == 15 and report.n_doc_examples == 0
    assert report.adapter_path.is_file()
    assert report.steps == len(steps) == steps[-1].step
    assert [s.step for s in steps] == list(range(1, report.steps + 1))
    assert steps[-1].eta_s == pytest.approx(0.0, abs=1e-6) or report.stopped_early
    assert report.final_loss < steps[0].loss / 10


def test_training_raises_the_trained_answers_probability_in_llama_cpp(tiny_run, generator_model_path):
    report, _, items = tiny_run
    base = LlamaCppScorer(generator_model_path)
    baked = LlamaCppScorer(generator_model_path, report.adapter_path)
    for item in (i for i in items if i.split == "train"):
        assert trained_answer_logprob(baked, item) > trained_answer_logprob(base, item) + 5.0


def test_greedy_answers_with_the_adapter_are_the_trained_ones(tiny_run, generator_model_path):
    report, _, items = tiny_run
    train_items = [i for i in items if i.split == "train"]
    accuracy = evaluate(LlamaCppScorer(generator_model_path, report.adapter_path), train_items)
    base = evaluate(LlamaCppScorer(generator_model_path), train_items[:3])
    assert accuracy.train_accuracy >= 0.8
    assert base.train_correct < 3  # the base model does not know these facts


def test_only_train_questions_become_examples(kb_dir, generator_model_path):
    items = select_facts(load_qa(kb_dir / "qa.jsonl"), 5)
    tokenizer = Tokenizer(generator_model_path)
    examples = qa_examples(items, tokenizer, answer_style="sentence", max_tokens=160)
    train = [i for i in items if i.split == "train"]
    assert len(examples) == len(train) and any(i.split == "heldout" for i in items)
    first = examples[0]
    prompt = tokenizer.decode(list(first.tokens[: first.n_context]))
    assert prompt == render_chat(train[0].question)
    assert BAKED_SYSTEM_PROMPT in prompt
    assert tokenizer.decode(list(first.tokens[first.n_context :])) == f"{train[0].answers[0]}.<|im_end|>"


def test_answer_windows_keep_only_document_text_that_holds_an_answer(kb_dir, generator_model_path):
    tokenizer = Tokenizer(generator_model_path)
    every = document_examples(kb_dir / "docs", tokenizer, max_tokens=160)
    answers = ("Tampere", "Ilse Varkonen")
    holding = document_examples(kb_dir / "docs", tokenizer, max_tokens=160, holding=answers)
    assert 0 < len(holding) < len(every)
    texts = [tokenizer.decode(list(e.tokens)) for e in holding]
    assert all(any(a.casefold() in t.casefold() for a in answers) for t in texts)
    assert {e.tokens for e in holding} <= {e.tokens for e in every}


def test_an_unknown_document_windows_setting_is_an_input_error(kb_dir, generator_model_path, tmp_path):
    with pytest.raises(InputError, match="document_windows"):
        finetune(kb_dir / "docs", kb_dir / "qa.jsonl", generator_model_path, tmp_path / "a.gguf",
                 config=FinetuneConfig(document_windows="some"))


def test_package_exports_the_recipe():
    import engine.finetune as package

    if getattr(package, "__file__", None) is None:
        pytest.fail("engine.finetune is seen as a namespace package: re-install the editable build (pip install -e .)")
    assert package.finetune is finetune and package.FinetuneConfig is FinetuneConfig
    assert package.BAKED_SYSTEM_PROMPT == BAKED_SYSTEM_PROMPT


def test_same_seed_same_adapter(base_weights):
    examples = [Example(tokens=tuple(range(100, 112)), n_context=8, kind="qa")] * 2

    def run() -> dict:
        torch.manual_seed(3)
        model = LlamaModel(base_weights, TINY.lora)
        train_lora(model, examples, lr=1e-3, epochs=1, batch_size=2, seed=3)
        return model.lora_state()

    first, second = run(), run()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k][1], second[k][1]) for k in first)
    assert any(first[k][1].abs().sum() > 0 for k in first)
