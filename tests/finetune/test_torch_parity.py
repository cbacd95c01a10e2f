"""The torch Llama computes what llama.cpp computes, on the GGUF tensors as stored."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from engine.errors import InputError, MissingExtraError, ModelError
from engine.generation.chat import baked_system_prompt

torch = pytest.importorskip("torch")

from engine.finetune.torch_model import LlamaModel  # noqa: E402

SYSTEM = baked_system_prompt("Fenwhistle Aquatronics")
PROMPTS = {  # id -> (asked as a chat question, text)
    "chat-hq": (True, "Where are the headquarters of Fenwhistle Aquatronics?"),
    "chat-filter": (True, "How often should I clean the filter of my irrigation pump?"),
    "plain": (False, "Fenwhistle Aquatronics is a Finnish maker of connected water-management devices for home "
                     "gardens, allotments, small greenhouses and freshwater aquariums."),
}
N_TOKENS = 30


@pytest.fixture(scope="module")
def base_served(served, generator_model_path):
    return served(generator_model_path)


def first_tokens(served_model, prompt: str) -> list[int]:
    """The first ``N_TOKENS`` tokens the generator feeds for ``PROMPTS[prompt]``."""
    chat, text = PROMPTS[prompt]
    tokens = served_model.prompt_tokens(SYSTEM, text) if chat else served_model.generator.tokenize(text)
    return tokens[:N_TOKENS]


def test_hyperparameters_come_from_the_gguf_metadata(base_weights):
    hp = base_weights.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_ff) == (30, 576, 9, 3, 1536)
    assert hp.n_vocab == 49152 and hp.tied_output
    assert hp.rope_freq_base == pytest.approx(100000.0)
    assert hp.rms_norm_eps == pytest.approx(1e-5)
    assert base_weights.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert base_weights.tensors["token_embd.weight"].dtype == torch.float32


@pytest.mark.parametrize("prompt", PROMPTS)
def test_next_token_log_probs_agree_with_llama_cpp(base_weights, base_served, parity, prompt):
    tokens = first_tokens(base_served, prompt)
    assert len(tokens) == N_TOKENS
    ours = parity.torch_log_probs(LlamaModel(base_weights), tokens)
    rows = parity.candidates(tokens, ours)
    reference = base_served.candidate_log_probs(tokens, rows)
    mine = parity.gather(ours, rows)

    # The log-probabilities (normalised over the whole vocabulary) of the likely tokens agree ...
    diffs = np.concatenate([r - m for r, m in zip(reference, mine)])
    assert np.abs(diffs).mean() < 0.15 and np.abs(diffs).max() < 1.0
    assert np.corrcoef(np.concatenate(reference), np.concatenate(mine))[0, 1] >= 0.99
    # ... and so does the greedy choice. llama.cpp quantizes activations to 8 bits for its
    # Q4_1 matmuls, so where its two best tokens are within a few hundredths of a nat the
    # winner may differ; everywhere else it must be the same.
    clear, agree = [], []
    for ref, ours_row in zip(reference, mine):
        top2 = np.sort(ref)[-2:]
        clear.append(top2[1] - top2[0] >= 0.25)
        agree.append(ref.argmax() == ours_row.argmax())
    clear, agree = np.array(clear), np.array(agree)
    assert agree[clear].all()
    assert agree.mean() >= 0.85


def test_unknown_matmul_dtype_is_an_input_error(base_weights):
    with pytest.raises(InputError, match="matmul_dtype"):
        LlamaModel(base_weights, matmul_dtype="float8")


def test_missing_model_file_is_a_model_error(tmp_path):
    from engine.finetune.gguf_weights import load_base

    with pytest.raises(ModelError, match="does not exist"):
        load_base(tmp_path / "absent.gguf")


def test_missing_torch_names_the_finetune_extra(monkeypatch):
    from engine.finetune._deps import require_torch

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match='"finetune" extra'):
        require_torch()
