"""Models of the cache are checked against their sha256 at load (remembered by size, mtime
and inode), and any other GGUF's header is checked before llama.cpp reads it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from lora_files import write_lora

from engine import models
from engine.embedding.embedder import Embedder
from engine.errors import AdapterError, ModelError
from engine.generation.generator import Generator

GENERATOR = models.DEFAULT_GENERATOR
STAMP = ".verified.json"


def flip(path: Path, offset: int) -> None:
    """Change one byte of ``path`` in place (same inode, new mtime)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x5A]))


@pytest.fixture
def cache(generator_model_path: Path, tmp_path: Path) -> Path:
    """A model cache in tmp_path holding a copy of the fetched generator and its stamp."""
    folder = tmp_path / "cache" / GENERATOR
    folder.mkdir(parents=True)
    shutil.copy2(generator_model_path, folder)
    shutil.copy(generator_model_path.parent / STAMP, folder)
    return tmp_path / "cache"


def test_a_cached_model_is_hashed_once_then_known_by_its_stat(cache, monkeypatch):
    path = models.model_path(GENERATOR, cache)  # a copy: new inode, so this hashes it
    entry = json.loads((path.parent / STAMP).read_text())[path.name]
    info = path.stat()
    assert (entry["size"], entry["mtime_ns"], entry["inode"]) == (info.st_size, info.st_mtime_ns, info.st_ino)
    assert (path.parent / STAMP).stat().st_mode & 0o777 == 0o644  # readable by every user of a shared cache

    def no_hashing(_path):
        raise AssertionError("an unchanged cached model was hashed again")

    monkeypatch.setattr(models.cache, "sha256_file", no_hashing)
    assert models.verify_file(path) is True
    Generator(path, n_ctx=256, n_threads=1)


def test_a_damaged_cached_model_is_refused_with_the_command_that_fetches_it_again(cache, generator_model_path):
    path = cache / GENERATOR / generator_model_path.name
    flip(path, path.stat().st_size - 4096)  # inside the last tensor's data: llama.cpp loads it without complaint
    with pytest.raises(ModelError, match="sha256.*bakeoff models fetch"):
        Generator(path, n_ctx=256, n_threads=1)
    with pytest.raises(ModelError, match="sha256.*bakeoff models fetch"):
        models.model_path(GENERATOR, cache)
    # fetching again repairs it from the source, and it loads
    [fetched] = models.fetch([GENERATOR], cache_dir=cache, source=generator_model_path.parent)
    assert fetched.downloaded
    Generator(fetched.main_path, n_ctx=256, n_threads=1)


def test_a_replaced_file_with_the_old_size_and_mtime_is_caught_by_its_inode(cache, generator_model_path, tmp_path):
    path = models.model_path(GENERATOR, cache)  # verified: the stamp now records this copy's inode
    damaged = tmp_path / "damaged.gguf"
    shutil.copy2(path, damaged)
    flip(damaged, damaged.stat().st_size - 4096)
    stat = path.stat()
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(damaged, path)  # what a restore from a backup or `cp -p` does: same size and mtime, new inode
    with pytest.raises(ModelError, match="sha256"):
        Generator(path, n_ctx=256, n_threads=1)


def test_a_model_outside_the_cache_is_not_hashed_but_its_header_is_checked(generator_model_path, tmp_path):
    data = generator_model_path.read_bytes()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid GGUF file.*truncated"):
        Generator(cut, n_ctx=256, n_threads=1)
    assert models.verify_file(cut) is False
    assert models.verify_file(generator_model_path.parent / "elsewhere.gguf") is False


def test_a_damaged_cached_embedder_graph_is_refused(embedder_dir, tmp_path):
    folder = tmp_path / "cache" / models.DEFAULT_EMBEDDER
    folder.mkdir(parents=True)
    for name in (STAMP, "tokenizer.json", "model.int8.onnx"):
        shutil.copy2(embedder_dir / name, folder)
    graph = folder / "model.int8.onnx"
    flip(graph, graph.stat().st_size // 2)  # a weight: onnxruntime loads the graph without complaint
    with pytest.raises(ModelError, match="sha256.*bakeoff models fetch"):
        Embedder(folder, variant="int8")


def test_a_damaged_adapter_header_is_an_adapter_error(generator_model_path, tmp_path):
    gen = Generator(generator_model_path, n_ctx=256, n_threads=1)
    path = write_lora(tmp_path / "lora.gguf")
    with open(path, "r+b") as handle:
        handle.seek(8)
        handle.write((1 << 40).to_bytes(8, "little"))  # the tensor count
    with pytest.raises(AdapterError, match="tensors, more than the limit"):
        gen.load_adapter(path)
    assert gen.adapters == ()
