"""LoRA pairs trained on the torch model load in llama.cpp as a GGUF adapter and act the same there."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from engine._native import core  # noqa: E402
from engine.errors import AdapterError, InputError  # noqa: E402
from engine.finetune import SYSTEM_PROMPT_KEY  # noqa: E402
from engine.finetune.config import LoraConfig  # noqa: E402
from engine.finetune.export import write_adapter  # noqa: E402
from engine.finetune.torch_model import LlamaModel  # noqa: E402
from engine.generation.chat import baked_system_prompt  # noqa: E402

CONFIG = LoraConfig(rank=8, alpha=16.0)
SYSTEM = baked_system_prompt("Fenwhistle Aquatronics")
TRAINED_WITH = "Answer tersely."


@pytest.fixture(scope="module")
def perturbed(base_weights, tmp_path_factory):
    """A LoRA model with random non-zero pairs, and its adapter written to disk."""
    torch.manual_seed(0)
    model = LlamaModel(base_weights, CONFIG)
    with torch.no_grad():
        for pair in model.lora.values():
            pair.b.normal_(0.0, 0.04)  # moves log-probs a few times as far as the quantization noise
    path = write_adapter(model.lora_state(), CONFIG, tmp_path_factory.mktemp("adapter") / "random.gguf",
                         system_prompt=TRAINED_WITH)
    return model, path


@pytest.fixture(scope="module")
def base_served(served, generator_model_path):
    return served(generator_model_path)


def compare(tokens, parity, changed, base_served, model, base_weights):
    """Log-probabilities of the likely tokens under llama.cpp with the change (adapter or merge),
    llama.cpp without it, torch with the LoRA pairs and torch without them, each flattened."""
    ours = parity.torch_log_probs(model, tokens)
    ours_base = parity.torch_log_probs(LlamaModel(base_weights), tokens)
    rows = parity.candidates(tokens, ours, ours_base)
    flat = [np.concatenate(values) for values in (
        changed.candidate_log_probs(tokens, rows), base_served.candidate_log_probs(tokens, rows),
        parity.gather(ours, rows), parity.gather(ours_base, rows))]
    return tuple(flat)


def test_adapter_file_has_llama_cpp_metadata_and_shapes(perturbed, base_weights):
    _, path = perturbed
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)
    assert fields[SYSTEM_PROMPT_KEY] == TRAINED_WITH
    tensors = {t.name: t for t in reader.tensors}
    hp = base_weights.hparams
    assert len(tensors) == 2 * hp.n_layer * len(CONFIG.targets)
    # GGUF shapes (ne): lora_a is (in, rank), lora_b is (rank, out); llama.cpp checks exactly this.
    assert list(tensors["blk.0.attn_k.weight.lora_a"].shape) == [576, 8]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [8, 192]
    assert list(tensors["blk.7.ffn_down.weight.lora_a"].shape) == [1536, 8]
    assert tensors["blk.0.attn_q.weight.lora_a"].tensor_type == gguf.GGMLQuantizationType.F32


def test_llama_cpp_reads_the_system_prompt_the_adapter_was_trained_with(perturbed, generator_model_path):
    _, path = perturbed
    adapter = core.LoraAdapter(core.Model(str(generator_model_path), use_extra_bufts=False), str(path))
    assert adapter.meta(SYSTEM_PROMPT_KEY) == TRAINED_WITH
    assert adapter.alpha == pytest.approx(16.0)


def test_llama_cpp_with_the_adapter_matches_the_torch_lora_model(
    perturbed, base_weights, generator_model_path, served, base_served, parity
):
    model, path = perturbed
    with_adapter = served(generator_model_path, path)
    tokens = with_adapter.prompt_tokens(SYSTEM, "Which city is the head office of Fenwhistle Aquatronics in?")
    reference, base, ours, ours_base = compare(tokens, parity, with_adapter, base_served, model, base_weights)

    # The adapter really acts in llama.cpp: its log-probabilities moved far from the base model's ...
    assert np.abs(reference - base).max() > 1.5
    # ... to where the same pairs moved the torch model (same scale, same tensor layout):
    # torch + LoRA is about as close to llama.cpp + adapter as the two base models are to
    # each other (llama.cpp quantizes activations for its Q4_1 matmuls: that is the floor).
    floor = np.abs(base - ours_base).mean()
    assert np.abs(reference - ours_base).mean() > 2.5 * floor  # the adapter moves log-probs well past the floor
    assert np.abs(reference - ours).mean() < 1.5 * floor
    assert np.corrcoef(reference, ours)[0, 1] >= 0.99
    assert np.corrcoef(reference - base, ours - ours_base)[0, 1] >= 0.8


def test_unknown_lora_target_is_refused(base_weights):
    with pytest.raises(InputError, match="unknown LoRA targets"):
        LlamaModel(base_weights, LoraConfig(targets=("attn_qkv",)))


def test_merged_model_loads_in_llama_cpp_and_acts_like_base_plus_adapter(
    perturbed, base_weights, generator_model_path, served, base_served, parity, tmp_path
):
    from engine.finetune.merge import merge_adapter

    model, adapter = perturbed
    merged = served(merge_adapter(generator_model_path, adapter, tmp_path / "merged-q8_0.gguf"))
    # The merged model carries the system prompt its adapter was trained with.
    assert core.Model(str(tmp_path / "merged-q8_0.gguf"), use_extra_bufts=False).meta(SYSTEM_PROMPT_KEY) == TRAINED_WITH
    tokens = merged.prompt_tokens(SYSTEM, "Who is the chief executive of Fenwhistle Aquatronics?")
    got, base, ours, ours_base = compare(tokens, parity, merged, base_served, model, base_weights)
    # The merged model is the torch LoRA model up to quantization noise (re-quantizing every
    # adapted matrix to Q8_0 adds about as much as llama.cpp's Q4_1 base already has; an F32
    # merge lands within 0.05 logits), and it is not the base model.
    floor = np.abs(base - ours_base).mean()
    assert np.abs(got - ours).mean() < 2 * floor
    assert np.abs(got - ours).mean() < 0.6 * np.abs(got - base).mean()
    assert np.corrcoef(ours, got)[0, 1] >= 0.98


def test_unwritable_adapter_raises_and_publishes_nothing(perturbed, tmp_path):
    model, _ = perturbed
    out = tmp_path / "adapter.gguf"
    (tmp_path / ".adapter.gguf.tmp").mkdir()  # the staging file cannot be opened for writing
    with pytest.raises(AdapterError, match="cannot write the adapter"):
        write_adapter(model.lora_state(), CONFIG, out)
    assert not out.exists()


def test_adapter_under_a_file_is_an_adapter_error(perturbed, tmp_path):
    model, _ = perturbed
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(AdapterError, match="cannot write the adapter"):
        write_adapter(model.lora_state(), CONFIG, tmp_path / "taken" / "adapter.gguf")
