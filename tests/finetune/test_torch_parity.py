"""The torch Llama computes what llama.cpp computes, on the GGUF tensors as stored."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.errors import MissingExtraError, ModelError

torch = pytest.importorskip("torch")

from engine.finetune.evaluate import LlamaCppScorer  # noqa: E402
from engine.finetune.model import LlamaModel  # noqa: E402
from engine.finetune.prompt import render_chat  # noqa: E402

PROMPTS = [
    render_chat("Where are the headquarters of Fenwhistle Aquatronics?"),
    render_chat("How often should I clean the filter of my irrigation pump?"),
    "Fenwhistle Aquatronics is a Finnish maker of connected water-management devices for home gardens, "
    "allotments, small greenhouses and freshwater aquariums.",
]


def test_hyperparameters_come_from_the_gguf_metadata(base_weights):
    hp = base_weights.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_ff) == (30, 576, 9, 3, 1536)
    assert hp.n_vocab == 49152 and hp.tied_output
    assert hp.rope_freq_base == pytest.approx(100000.0)
    assert hp.rms_norm_eps == pytest.approx(1e-5)
    assert base_weights.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert base_weights.tensors["token_embd.weight"].dtype == torch.float32


@pytest.mark.parametrize("prompt", PROMPTS, ids=["chat-hq", "chat-filter", "plain"])
def test_next_token_logits_agree_with_llama_cpp(base_weights, generator_model_path, prompt):
    scorer = LlamaCppScorer(generator_model_path)
    tokens = scorer.tokenize(prompt)[:30]
    assert len(tokens) == 30
    reference = scorer.logits(tokens)
    with torch.no_grad():
        ours = LlamaModel(base_weights)(torch.tensor([tokens]))[0].numpy()

    correlations = [np.corrcoef(reference[i], ours[i])[0, 1] for i in range(len(tokens))]
    assert min(correlations) >= 0.99
    # llama.cpp quantizes activations to 8 bits for its Q4_1 matmuls, so where its two
    # best tokens are within a few hundredths of a logit the winner may differ; everywhere
    # else the greedy choice must be the same.
    top2 = np.sort(reference, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.25
    agree = reference.argmax(-1) == ours.argmax(-1)
    assert agree[clear].all()
    assert agree.mean() >= 0.9


def test_missing_model_file_is_a_model_error(tmp_path):
    from engine.finetune.gguf_weights import load_base

    with pytest.raises(ModelError, match="does not exist"):
        load_base(tmp_path / "absent.gguf")


def test_missing_torch_names_the_finetune_extra(monkeypatch):
    from engine.finetune._deps import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match='"finetune" extra'):
        require_torch()
