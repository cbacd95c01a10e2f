"""The attention probe: which flash-attention setting prefills a question over spliced states fastest."""

from __future__ import annotations

import pytest

from engine.errors import InputError
from engine.generation.threads import FLASH_MARGIN, FLASH_SETTINGS, fastest_attention


def test_the_attention_probe_times_every_setting_and_keeps_auto_unless_beaten(generator_model_path):
    chosen, probe_ms = fastest_attention(generator_model_path, n_threads=1, prefix_tokens=8, chunk_tokens=32,
                                         question_tokens=8, rounds=1)
    assert list(probe_ms) == list(FLASH_SETTINGS) and all(0 < ms < float("inf") for ms in probe_ms.values())
    assert chosen in FLASH_SETTINGS
    if chosen != "auto":
        assert probe_ms[chosen] < probe_ms["auto"] * (1 - FLASH_MARGIN)


def test_the_attention_probe_refuses_what_it_cannot_measure(generator_model_path):
    with pytest.raises(InputError, match="question_tokens"):
        fastest_attention(generator_model_path, question_tokens=0)
    with pytest.raises(InputError, match="2048"):
        fastest_attention(generator_model_path, chunks=4, chunk_tokens=600)
    with pytest.raises(InputError, match="flash"):  # a quantized V cache needs flash attention: no choice
        fastest_attention(generator_model_path, kv_type="q8_0", prefix_tokens=8, chunk_tokens=8, rounds=1)
