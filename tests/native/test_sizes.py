"""Sizes across llama.cpp's C API: strings longer than a first guess come back whole."""

from __future__ import annotations

import pytest

from engine._native import core
from engine.hardware import use_extra_buffer_types


@pytest.fixture(scope="module")
def model(generator_model_path) -> core.Model:
    # the engine's policy for llama.cpp's extra CPU buffers: AMX's multi-token matmul crashes (issue 20824)
    return core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())


def test_a_metadata_value_longer_than_the_first_buffer_comes_back_whole(model):
    template = model.meta("tokenizer.chat_template")
    assert len(template) > 256  # the first read's buffer: this value needs the second, grown one
    assert template == model.info.chat_template
    assert model.meta("no.such.key") == ""


def test_a_long_chat_renders_whole(model):
    long = "word " * 4000
    rendered = model.apply_chat_template([("user", long)], add_assistant=True)
    assert rendered.startswith("<|im_start|>user\n" + long)
    assert rendered.endswith("<|im_start|>assistant\n")
