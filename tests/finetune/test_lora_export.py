"""LoRA pairs trained on the torch model load in llama.cpp as a GGUF adapter and act the same there."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from engine.errors import AdapterError, InputError  # noqa: E402
from engine.finetune.config import LoraConfig  # noqa: E402
from engine.finetune.evaluate import LlamaCppScorer  # noqa: E402
from engine.finetune.export import write_adapter  # noqa: E402
from engine.finetune.model import LlamaModel  # noqa: E402
from engine.finetune.prompt import render_chat  # noqa: E402

CONFIG = LoraConfig(rank=8, alpha=16.0)


@pytest.fixture(scope="module")
def perturbed(base_weights, tmp_path_factory):
    """A LoRA model with random non-zero pairs, and its adapter written to disk."""
    torch.manual_seed(0)
    model = LlamaModel(base_weights, CONFIG)
    with torch.no_grad():
        for pair in model.lora.values():
            pair.b.normal_(0.0, 0.02)
    path = write_adapter(model.lora_state(), CONFIG, tmp_path_factory.mktemp("adapter") / "random.gguf")
    return model, path


def test_adapter_file_has_llama_cpp_metadata_and_shapes(perturbed, base_weights):
    _, path = perturbed
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)
    tensors = {t.name: t for t in reader.tensors}
    hp = base_weights.hparams
    assert len(tensors) == 2 * hp.n_layer * len(CONFIG.targets)
    # GGUF shapes (ne): lora_a is (in, rank), lora_b is (rank, out); llama.cpp checks exactly this.
    assert list(tensors["blk.0.attn_k.weight.lora_a"].shape) == [576, 8]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [8, 192]
    assert list(tensors["blk.7.ffn_down.weight.lora_a"].shape) == [1536, 8]
    assert tensors["blk.0.attn_q.weight.lora_a"].tensor_type == gguf.GGMLQuantizationType.F32


def test_llama_cpp_with_the_adapter_matches_the_torch_lora_model(perturbed, base_weights, generator_model_path):
    model, path = perturbed
    with_adapter = LlamaCppScorer(generator_model_path, path)
    tokens = with_adapter.tokenize(render_chat("Which city is the head office of Fenwhistle Aquatronics in?"))
    reference = with_adapter.logits(tokens)
    base = LlamaCppScorer(generator_model_path).logits(tokens)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0].numpy()
        ours_base = LlamaModel(base_weights)(torch.tensor([tokens]))[0].numpy()

    # The adapter really acts in llama.cpp: its logits moved far from the base model's ...
    assert np.abs(reference - base).max() > 2.0
    # ... to where the same pairs moved the torch model (same scale, same tensor layout):
    # torch + LoRA is as close to llama.cpp + adapter as the two base models are to each
    # other (llama.cpp quantizes activations for its Q4_1 matmuls: that is the floor).
    floor = np.abs(base - ours_base).mean()
    assert np.abs(reference - ours_base).mean() > 1.5 * floor  # the adapter moves logits well past the floor
    assert np.abs(reference - ours).mean() < 1.3 * floor
    for i in range(len(tokens)):
        assert np.corrcoef(reference[i], ours[i])[0, 1] >= 0.99
    assert np.corrcoef((reference - base).ravel(), (ours - ours_base).ravel())[0, 1] >= 0.8


def test_unknown_lora_target_is_refused(base_weights):
    with pytest.raises(InputError, match="unknown LoRA targets"):
        LlamaModel(base_weights, LoraConfig(targets=("attn_qkv",)))


def test_merged_model_loads_in_llama_cpp_and_acts_like_base_plus_adapter(
    perturbed, base_weights, generator_model_path, tmp_path
):
    from engine.finetune.merge import merge_adapter

    model, adapter = perturbed
    merged = merge_adapter(generator_model_path, adapter, tmp_path / "merged-q8_0.gguf")
    scorer = LlamaCppScorer(merged)
    tokens = scorer.tokenize(render_chat("Who is the chief executive of Fenwhistle Aquatronics?"))
    got = scorer.logits(tokens)
    base = LlamaCppScorer(generator_model_path).logits(tokens)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0].numpy()
        ours_base = LlamaModel(base_weights)(torch.tensor([tokens]))[0].numpy()
    # The merged model is the torch LoRA model up to quantization noise (re-quantizing every
    # adapted matrix to Q8_0 adds about as much as llama.cpp's Q4_1 base already has; an F32
    # merge lands within 0.05 logits), and it is not the base model.
    floor = np.abs(base - ours_base).mean()
    assert np.abs(got - ours).mean() < 2 * floor
    assert np.abs(got - ours).mean() < np.abs(got - base).mean()
    for i in range(len(tokens)):
        assert np.corrcoef(ours[i], got[i])[0, 1] >= 0.98


def test_unwritable_adapter_raises_and_publishes_nothing(perturbed, tmp_path):
    model, _ = perturbed
    out = tmp_path / "adapter.gguf"
    (tmp_path / "adapter.gguf.tmp").mkdir()  # the staging file cannot be opened for writing
    with pytest.raises(AdapterError, match="cannot write the adapter"):
        write_adapter(model.lora_state(), CONFIG, out)
    assert not out.exists()
