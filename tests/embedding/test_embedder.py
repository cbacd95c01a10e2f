"""Embedder: what a caller sees (shapes, similarity, batching, int8, tokens, errors)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.embedding.embedder import Embedder
from engine.errors import InputError, ModelError

# Measured int8 vs fp32 on 300 stdlib docstring sentences: mean 0.998, min 0.996.
INT8_MIN_COSINE = 0.99

SENTENCES = [
    "How do I reset my password?",
    "The cat sat on the mat.",
    "A man is playing a guitar.",
    "Stock markets fell sharply on Monday after the announcement.",
    "Photosynthesis converts light energy into chemical energy.",
    "Return a sorted list of the items in the iterable.",
    "Raise ValueError if the argument is negative.",
    "The meeting was moved to Thursday because of the storm.",
    "Python is a programming language that lets you work quickly.",
    "The Eiffel Tower is in Paris.",
    "Open the file in binary mode and read the first 16 bytes.",
    "Hi",
    "12345 67890",
    "Le chat est assis sur le tapis.",
    "東京は日本の首都です。",
    "What is the boiling point of water at sea level?",
    "Neural networks are trained with gradient descent.",
    "Please send the invoice by email before Friday.",
    "The library closes at 8 pm on weekdays.",
    "A thread pool runs calls asynchronously and returns futures.",
    "He scored two goals in the second half of the match.",
    "Store the vectors in an index for nearest-neighbour search.",
]


@pytest.fixture(scope="module")
def fp32(embedder_dir: Path) -> Embedder:
    return Embedder(embedder_dir, variant="fp32")


@pytest.fixture(scope="module")
def int8(embedder_dir: Path) -> Embedder:
    return Embedder(embedder_dir, variant="int8")


def test_attributes(fp32: Embedder, embedder_dir: Path) -> None:
    assert fp32.model_id == "all-MiniLM-L6-v2" == embedder_dir.name
    assert (fp32.variant, fp32.dim, fp32.max_tokens) == ("fp32", 384, 256)
    assert fp32.providers[0] == "CPUExecutionProvider"


def test_manifest_name_resolves_through_cache(embedder_dir: Path) -> None:
    embedder = Embedder("all-MiniLM-L6-v2", cache_dir=embedder_dir.parent)
    assert embedder.model_id == "all-MiniLM-L6-v2"


def test_shapes_dtype_and_unit_norm(fp32: Embedder) -> None:
    vectors = fp32.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert fp32.embed([]).shape == (0, 384)
    assert fp32.embed([""]).shape == (1, 384)


def test_similar_sentences_score_higher(fp32: Embedder) -> None:
    query, close, far = fp32.embed(
        ["How can I change my password?", "Steps to reset a forgotten account password", "The recipe needs two eggs"])
    assert query @ close > query @ far + 0.2


def test_batching_does_not_change_results(embedder_dir: Path) -> None:
    embedder = Embedder(embedder_dir, batch_size=4)
    texts = SENTENCES + ["word " * 300]
    batched = embedder.embed(texts)
    single = np.stack([embedder.embed_query(t) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_query_equals_embed(fp32: Embedder) -> None:
    for text in ("How do I reset my password?", "", "word " * 400):
        vector = fp32.embed_query(text)
        assert vector.shape == (384,) and vector.dtype == np.float32
        np.testing.assert_allclose(vector, fp32.embed([text])[0], atol=1e-5)


def test_long_texts_are_truncated_to_max_tokens(embedder_dir: Path) -> None:
    embedder = Embedder(embedder_dir, max_tokens=32)
    # "word" is one token: 30 of them fill the 32 slots with [CLS] and [SEP].
    np.testing.assert_allclose(embedder.embed_query("word " * 200), embedder.embed_query("word " * 30), atol=1e-5)


def test_progress_reports_texts_done(embedder_dir: Path) -> None:
    seen: list[int] = []
    Embedder(embedder_dir, batch_size=8).embed(SENTENCES, progress=seen.append)
    assert seen == [8, 16, len(SENTENCES)]


def test_int8_close_to_fp32(fp32: Embedder, int8: Embedder) -> None:
    assert int8.variant == "int8"
    cosine = np.sum(fp32.embed(SENTENCES) * int8.embed(SENTENCES), axis=1)
    assert len(cosine) >= 20
    assert cosine.min() >= INT8_MIN_COSINE, f"min cosine {cosine.min():.4f}"


def test_token_offsets_map_to_text(fp32: Embedder) -> None:
    text = "Tokenization splits naïve words: un-believable, 3.14!"
    spans = fp32.token_offsets(text)
    assert len(spans) == fp32.count_tokens(text)
    pieces = [text[start:end] for start, end in spans]
    assert pieces[0] == "Token" and "naïve" in pieces
    assert all(0 <= start < end <= len(text) for start, end in spans)
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)
    assert "".join(pieces) == "".join(text.split())


def test_count_tokens_does_not_truncate(fp32: Embedder) -> None:
    assert fp32.count_tokens("word " * 1000) == 1000
    assert fp32.count_tokens("") == 0


def test_unknown_provider_lists_available(embedder_dir: Path) -> None:
    with pytest.raises(InputError, match="CPUExecutionProvider"):
        Embedder(embedder_dir, providers=["NoSuchExecutionProvider"])


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="bakeoff models fetch"):
        Embedder(tmp_path / "nowhere")


def test_unknown_model_name() -> None:
    with pytest.raises(InputError, match="all-MiniLM-L6-v2"):
        Embedder("no-such-model")


def test_corrupted_model_file(embedder_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.mkdir()
    shutil.copy(embedder_dir / "tokenizer.json", folder)
    data = (embedder_dir / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="bakeoff models fetch"):
        Embedder(folder)
    with pytest.raises(ModelError, match="bakeoff models fetch"):
        Embedder(folder, variant="int8")


def test_non_str_input(fp32: Embedder) -> None:
    with pytest.raises(InputError, match=r"texts\[1\]"):
        fp32.embed(["fine", 42])
    with pytest.raises(InputError):
        fp32.embed("a single string")
    with pytest.raises(InputError):
        fp32.embed_query(b"bytes")
    with pytest.raises(InputError):
        fp32.count_tokens(None)


def test_bad_settings(embedder_dir: Path) -> None:
    for kwargs in ({"variant": "fp16"}, {"variant": ["fp32"]}, {"threads": 0}, {"batch_size": 0},
                   {"max_tokens": 1000}, {"providers": 7}):
        with pytest.raises(InputError):
            Embedder(embedder_dir, **kwargs)


def test_importing_the_embedder_loads_neither_onnx_nor_llama_cpp() -> None:
    script = "import sys, engine.embedding.embedder; print(sorted({'onnx', 'engine._core'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_with_variant_gives_the_same_model_with_the_other_graph_once(fp32: Embedder) -> None:
    int8 = fp32.with_variant("int8")
    assert int8.variant == "int8" and int8.model_id == fp32.model_id and int8.max_tokens == fp32.max_tokens
    assert fp32.with_variant("int8") is int8 and fp32.with_variant("fp32") is fp32
    text = "Press the status ring for three seconds to pair the pump with the hub."
    assert float(int8.embed_query(text) @ fp32.embed_query(text)) > 0.99
    with pytest.raises(InputError, match="variant must be"):
        fp32.with_variant("fp16")
