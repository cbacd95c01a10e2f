"""Session fixtures: the real models, provisioned once per test session.

Models are fetched into the normal model cache (``$BAKEOFF_MODELS_DIR`` or the
checkout's ``models/``), so a second session finds them there and does no work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import models


@pytest.fixture(scope="session")
def generator_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 (GGUF)."""
    [fetched] = models.fetch([models.DEFAULT_GENERATOR])
    return fetched.main_path


@pytest.fixture(scope="session")
def embedder_dir() -> Path:
    """Folder of all-MiniLM-L6-v2: safetensors, tokenizer.json, model.onnx, model.int8.onnx, model.int8-full.onnx."""
    [fetched] = models.fetch([models.DEFAULT_EMBEDDER])
    return fetched.directory


def _tiny_config():
    from engine.finetune import FinetuneConfig

    return FinetuneConfig(limit_facts=5, batch_size=5, epochs=8, stop_loss=0.05, use_documents=False,
                          reader_per_fact=0.0)


@pytest.fixture(scope="session")
def tiny_finetune(generator_model_path, tmp_path_factory):
    """A LoRA adapter trained once per session on the first five facts (the tiny recipe, <= 2 min).

    Returns ``(report, progress_steps)``. Skips when the ``finetune`` extra is missing.
    """
    pytest.importorskip("torch")
    from engine.finetune import finetune
    from engine.questions.qa import BUNDLED_SET

    config = _tiny_config()
    steps = []
    report = finetune(BUNDLED_SET / "docs", BUNDLED_SET / "qa.jsonl", generator_model_path,
                      tmp_path_factory.mktemp("tiny") / "tiny-lora.gguf",
                      config=config,
                      progress=steps.append)
    return report, steps
