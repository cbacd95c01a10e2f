"""The K/V cache types: one table in the native core, the same list in Python's checks."""

from __future__ import annotations

import importlib

import pytest

from engine._native import core
from engine.errors import InputError
from engine.hardware import use_extra_buffer_types


def _python_kv_types() -> tuple[str, ...]:
    # Where the generation settings live: engine.generation.types after the re-layout of issue 20.
    for name in ("engine.generation.types", "engine.generation_types"):
        try:
            return tuple(importlib.import_module(name).KV_TYPES)
        except ModuleNotFoundError:
            continue
    raise AssertionError("no module defines KV_TYPES")


@pytest.fixture(scope="module")
def model(generator_model_path) -> core.Model:
    # the engine's policy for llama.cpp's extra CPU buffers: AMX's multi-token matmul crashes (issue 20824)
    return core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())


def test_python_checks_kv_type_against_the_native_table():
    assert _python_kv_types() == core.KV_TYPES
    assert core.KV_TYPES[0] == "f16"  # Session's default


def test_every_listed_kv_type_makes_a_context(model):
    for kv_type in core.KV_TYPES:
        # flash attention on: llama.cpp needs it for a quantized V cache
        session = core.Session(model, n_ctx=256, n_batch=64, flash_attn=1, kv_type=kv_type, warmup=False)
        assert session.n_ctx == 256, kv_type


def test_an_unknown_kv_type_is_refused_with_the_table(model):
    with pytest.raises(InputError) as refused:
        core.Session(model, n_ctx=256, kv_type="q3_k")
    assert f"use one of {', '.join(core.KV_TYPES)}" in str(refused.value)
