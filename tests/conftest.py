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
    """Folder of all-MiniLM-L6-v2: safetensors, tokenizer.json, model.onnx, model.int8.onnx."""
    [fetched] = models.fetch([models.DEFAULT_EMBEDDER])
    return fetched.directory
