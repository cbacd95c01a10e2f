"""The recipe end to end on a tiny configuration: five facts of the bundled knowledge set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from engine._native import core  # noqa: E402
from engine.errors import InputError  # noqa: E402
from engine.finetune import SYSTEM_PROMPT_KEY  # noqa: E402
from engine.finetune.config import FinetuneConfig  # noqa: E402
from engine.finetune.data import Example, answer_target, document_examples, load_qa, qa_examples, training_system_prompt  # noqa: E402
from engine.finetune.recipe import FinetuneReport, finetune  # noqa: E402
from engine.finetune.torch_model import LlamaModel  # noqa: E402
from engine.finetune.train import train_lora  # noqa: E402
from engine.generation.chat import baked_system_prompt  # noqa: E402
from engine.generation.tokenizer import Tokenizer  # noqa: E402
from engine.questions.qa import select_facts  # noqa: E402

TINY = FinetuneConfig(limit_facts=5, batch_size=5, epochs=8, stop_loss=0.05, use_documents=False,
                      reader_per_fact=0.0)
BUNDLED_PROMPT = "Answer questions about Fenwhistle Aquatronics briefly."


@pytest.fixture(scope="module")
def tiny_run(kb_dir, tiny_finetune):
    """The tiny configuration, trained once per session (tests/conftest.py); its progress reports."""
    report, steps = tiny_finetune
    assert report.config == TINY, "tests/conftest.py trains the same tiny configuration"
    items = select_facts(load_qa(kb_dir / "qa.jsonl"), TINY.limit_facts)
    return report, steps, items


@pytest.fixture(scope="module")
def tokenizer(generator_model_path):
    return Tokenizer(generator_model_path)


def test_report_and_progress_describe_the_run(tiny_run):
    report, steps, _ = tiny_run
    assert isinstance(report, FinetuneReport)
    assert report.n_facts == 5 and report.n_qa_examples == 15 and report.n_doc_examples == 0
    assert report.adapter_path.is_file()
    assert report.steps == len(steps) == steps[-1].step
    assert [s.step for s in steps] == list(range(1, report.steps + 1))
    assert steps[-1].eta_s == pytest.approx(0.0, abs=1e-6) or report.stopped_early
    assert report.final_loss < steps[0].loss / 10


def test_the_adapter_records_the_system_prompt_named_by_the_sets_data(tiny_run, generator_model_path, served):
    report, _, _ = tiny_run
    assert report.system_prompt == BUNDLED_PROMPT == baked_system_prompt("Fenwhistle Aquatronics")
    baked = served(generator_model_path, report.adapter_path)
    [name] = baked.adapters
    assert baked.generator.adapter_metadata(name)[SYSTEM_PROMPT_KEY] == report.system_prompt


def test_training_raises_the_trained_answers_probability_in_llama_cpp(tiny_run, generator_model_path, served,
                                                                      tokenizer):
    report, _, items = tiny_run
    base = served(generator_model_path)
    baked = served(generator_model_path, report.adapter_path)
    end = tokenizer.chat.end_of_turn
    for item in (i for i in items if i.split == "train"):
        target = answer_target(item.answers[0], TINY.answer_style)
        trained = baked.answer_log_prob(report.system_prompt, item.question, target, end)
        assert trained > base.answer_log_prob(report.system_prompt, item.question, target, end) + 5.0


def test_greedy_answers_with_the_adapter_are_the_trained_ones(tiny_run, generator_model_path, served):
    report, _, items = tiny_run
    train_items = [i for i in items if i.split == "train"]
    assert served(generator_model_path, report.adapter_path).accuracy(report.system_prompt, train_items) >= 0.8
    # the base model does not know these facts
    assert served(generator_model_path).accuracy(report.system_prompt, train_items[:3]) < 1.0


def test_training_prompts_are_the_tokens_inference_feeds(kb_dir, generator_model_path, tokenizer, served):
    items = select_facts(load_qa(kb_dir / "qa.jsonl"), 5)
    examples = qa_examples(items, tokenizer, system_prompt=BUNDLED_PROMPT, answer_style="sentence", max_tokens=160)
    train = [i for i in items if i.split == "train"]
    assert len(examples) == len(train) and any(i.split == "heldout" for i in items)
    generator = served(generator_model_path).generator
    model = core.Model(str(generator_model_path), use_extra_bufts=False)
    for example, item in zip(examples, train):
        text = generator.format_chat([("system", BUNDLED_PROMPT), ("user", item.question)])
        assert list(example.tokens[: example.n_context]) == model.tokenize(text, add_special=True,
                                                                           parse_special=True)
        assert tokenizer.decode(example.tokens[example.n_context :]) == f"{item.answers[0]}.<|im_end|>"
    assert tokenizer.chat.end_of_turn == "<|im_end|>"


def test_the_system_prompt_comes_from_the_sets_data(kb_dir, tmp_path):
    assert training_system_prompt(kb_dir / "qa.jsonl") == BUNDLED_PROMPT
    (tmp_path / "set.json").write_text(json.dumps({"subject": "Acme Widgets"}))
    assert training_system_prompt(tmp_path / "qa.jsonl") == "Answer questions about Acme Widgets briefly."
    assert training_system_prompt(tmp_path / "qa.jsonl", "Be brief.") == "Be brief."
    (tmp_path / "set.json").unlink()
    assert training_system_prompt(tmp_path / "qa.jsonl") == baked_system_prompt()


def test_an_explicit_system_prompt_is_trained(kb_dir, tokenizer):
    items = select_facts(load_qa(kb_dir / "qa.jsonl"), 1)
    [example, *_] = qa_examples(items, tokenizer, system_prompt="Reply in one word.", answer_style="bare",
                                max_tokens=160)
    prompt = tokenizer.decode(example.tokens[: example.n_context])
    assert "Reply in one word." in prompt and "Fenwhistle Aquatronics briefly" not in prompt


def test_answer_windows_keep_only_document_text_that_holds_an_answer(kb_dir, tokenizer):
    every = document_examples(kb_dir / "docs", tokenizer, max_tokens=160)
    answers = ("Tampere", "Ilse Varkonen")
    holding = document_examples(kb_dir / "docs", tokenizer, max_tokens=160, holding=answers)
    assert 0 < len(holding) < len(every)
    texts = [tokenizer.decode(e.tokens) for e in holding]
    assert all(any(a.casefold() in t.casefold() for a in answers) for t in texts)
    assert {e.tokens for e in holding} <= {e.tokens for e in every}


def test_a_document_that_is_not_utf8_is_a_document_error(tokenizer, tmp_path):
    from engine.errors import DocumentError

    (tmp_path / "latin1.md").write_bytes("Caf\xe9 opening hours".encode("latin-1"))
    with pytest.raises(DocumentError, match="latin1.md is not UTF-8"):
        document_examples(tmp_path, tokenizer, max_tokens=160)


@pytest.mark.parametrize("setting", [
    {"document_windows": "some"}, {"answer_style": "poem"}, {"matmul_dtype": "float8"}, {"epochs": 0},
    {"batch_size": -1}, {"rank": 0}, {"lr": 0.0}, {"max_seq_tokens": 1}, {"limit_facts": 0}, {"threads": 0},
    {"dropout": 1.0}, {"targets": ()}, {"targets": ("attn_qkv",)}, {"system_prompt": " "},
    {"max_train_seconds": float("nan")},
], ids=lambda setting: next(iter(setting)))
def test_an_unusable_setting_is_an_input_error_before_any_work(kb_dir, generator_model_path, tmp_path, setting):
    with pytest.raises(InputError, match=next(iter(setting))):
        finetune(kb_dir / "docs", kb_dir / "qa.jsonl", generator_model_path, tmp_path / "a.gguf",
                 config=FinetuneConfig(**setting))
    assert not (tmp_path / "a.gguf").exists()


def test_an_unknown_answer_style_is_an_input_error():
    with pytest.raises(InputError, match="answer style"):
        answer_target("2014", "poem")


def test_package_exports_the_recipe():
    import engine.finetune as package

    if getattr(package, "__file__", None) is None:
        pytest.fail("engine.finetune is seen as a namespace package: re-install the editable build (pip install -e .)")
    assert package.finetune is finetune and package.FinetuneConfig is FinetuneConfig
    assert package.SYSTEM_PROMPT_KEY == "bakeoff.system_prompt"


def test_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['gguf'] = None\n"
            "import engine.finetune as f\n"
            "assert f.FinetuneConfig().system_prompt is None and f.SYSTEM_PROMPT_KEY\n"
            "from engine.errors import MissingExtraError\n"
            "try:\n    f.finetune\nexcept MissingExtraError as e:\n    print('extra:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert '"finetune" extra' in out


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
