"""The exported ONNX graphs: parity with the PyTorch reference, determinism, atomic writes."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.embedding import export as onnx_export
from engine.embedding.embedder import Embedder
from engine.errors import ModelError
from engine.models.registry import EXPORTED_NAMES

# The reference model must come from the local folder only, never from a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

MAX_TOKENS = 256
# Measured on 3,300 stdlib docstring sentences (see engine/onnx_quantize.py): int8 vs fp32
# cosine has mean 0.998 and min 0.994; the floors leave room for other CPUs' kernels.
INT8_MIN_COSINE = 0.99
INT8_MEAN_COSINE = 0.995

SENTENCES = [
    "Hi",
    "The cat sat on the mat.",
    "How do I reset my password?",
    "A man is playing a guitar on stage.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "The quarterly revenue grew by 12.5% to $4,300,000 in Q3 2024.",
    "Call me at +1 (555) 123-4567 before 09:30, or email ops@example.com!",
    "!!! ??? ... --- ;;; ###",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Le chat est assis sur le tapis et regarde la pluie tomber.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El aprendizaje automático transforma la industria.",
    "東京は日本の首都であり、世界最大の都市圏の一つです。",
    "Москва — столица России.",
    "🙂 emoji and ümlauts: naïve café résumé",
    "   leading and trailing whitespace   ",
    "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface.",
    "Retrieval-augmented generation grounds a language model's answer in documents from a knowledge base.",
    " ".join(["The committee reviewed the proposal, discussed its budget, and asked for revisions."] * 25),
    " ".join(f"item{i}" for i in range(400)),
]


@pytest.fixture(scope="module")
def reference_embeddings(embedder_dir: Path) -> np.ndarray:
    """all-MiniLM-L6-v2 through transformers + torch: mean pooling over the mask, then L2."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(embedder_dir), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(embedder_dir), local_files_only=True).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=1).numpy()


@pytest.mark.reference
def test_inputs_cover_long_text_truncation(embedder_dir: Path) -> None:
    embedder = Embedder(embedder_dir, max_tokens=MAX_TOKENS)
    assert len(SENTENCES) >= 20
    assert max(embedder.count_tokens(s) for s in SENTENCES) > 300


@pytest.mark.reference
def test_fp32_matches_pytorch(embedder_dir: Path, reference_embeddings: np.ndarray) -> None:
    ours = Embedder(embedder_dir, variant="fp32", max_tokens=MAX_TOKENS).embed(SENTENCES)
    cosine = np.sum(ours * reference_embeddings, axis=1)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= 0.999, f"cosine {cosine.min():.5f} for {SENTENCES[worst][:60]!r}"


@pytest.mark.reference
def test_int8_stays_close_to_pytorch(embedder_dir: Path, reference_embeddings: np.ndarray) -> None:
    ours = Embedder(embedder_dir, variant="int8", max_tokens=MAX_TOKENS).embed(SENTENCES)
    cosine = np.sum(ours * reference_embeddings, axis=1)
    print(f"int8 vs PyTorch cosine: mean {cosine.mean():.5f}, min {cosine.min():.5f}")
    assert cosine.min() >= INT8_MIN_COSINE
    assert cosine.mean() >= INT8_MEAN_COSINE


def _model_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (target / name).symlink_to(source / name)
    return target


def test_export_is_deterministic(embedder_dir: Path, tmp_path: Path, caplog) -> None:
    root_handlers = list(logging.getLogger().handlers)
    first = onnx_export.export_embedder(_model_copy(embedder_dir, tmp_path / "a"))
    # the quantizer's generic pre-processing advice is not shown to users, and the
    # export leaves the root logger as it found it
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert logging.getLogger().handlers == root_handlers
    second = onnx_export.export_embedder(_model_copy(embedder_dir, tmp_path / "b"))
    assert [p.name for p in first] == ["model.onnx", "model.int8.onnx", "model.int8-full.onnx"] == list(EXPORTED_NAMES)
    # nothing else is left beside the graphs: no temporary file, no quantizer scratch folder
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "config.json", "model.int8-full.onnx", "model.int8.onnx", "model.onnx", "model.safetensors", "tokenizer.json"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two exports"


def test_truncated_weights_raise_and_leave_nothing(embedder_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(embedder_dir / "config.json", folder)
    data = (embedder_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="bakeoff models fetch"):
        onnx_export.export_embedder(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_failed_export_keeps_previous_graph(embedder_dir: Path, tmp_path: Path) -> None:
    folder = _model_copy(embedder_dir, tmp_path / "model")
    onnx_export.export_embedder(folder)
    before = (folder / "model.onnx").read_bytes()
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError):
        onnx_export.export_embedder(folder)
    assert (folder / "model.onnx").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".") or "quantiz" in p.name]
