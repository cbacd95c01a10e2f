"""Fixtures of the fine-tune tests: the base model dequantized once, the bundled knowledge set."""

from __future__ import annotations

from pathlib import Path

import pytest

KB_DIR = Path(__file__).resolve().parents[2] / "engine" / "data" / "kb"


@pytest.fixture(scope="session")
def base_weights(generator_model_path: Path):
    """SmolLM2-135M-Instruct's tensors as float32 torch tensors (about 5 s to dequantize)."""
    pytest.importorskip("torch")
    from engine.finetune.gguf_weights import load_base

    return load_base(generator_model_path)


@pytest.fixture(scope="session")
def kb_dir() -> Path:
    """The bundled knowledge set: ``docs/*.md`` and ``qa.jsonl``."""
    return KB_DIR
