"""manifest.json is checked against its schema; checksums are cached per generation.

A damaged or hand-edited manifest used to escape as UnicodeDecodeError, IsADirectoryError,
TypeError or AttributeError, or to open another folder's data (issue 12). Now every
failure is ``KnowledgeBaseCorruptError`` naming the field and saying how to rebuild.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from engine.errors import KnowledgeBaseCorruptError, KnowledgeBaseMismatchError
from engine.kb import manifest
from engine.kb.knowledge_base import KnowledgeBase

REBUILD = "bakeoff index --rebuild"


def _edit(kb_dir: Path, change) -> None:
    path = kb_dir / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def _refused(kb_dir: Path, embedder, *fragments: str) -> str:
    with pytest.raises(KnowledgeBaseCorruptError) as caught:
        KnowledgeBase.open(kb_dir, embedder=embedder)
    message = str(caught.value)
    for fragment in (*fragments, REBUILD):
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ what issue 12 found


def test_a_generation_in_another_folder_is_refused(kb_copy, tmp_path, embedder):
    other = Path(shutil.copytree(kb_copy, tmp_path / "other"))
    generation = json.loads((other / "manifest.json").read_text())["generation"]
    _edit(kb_copy, lambda raw: raw.update(generation=f"../other/{generation}"))
    _refused(kb_copy, embedder, "field 'generation'", "gen-NNNNNN")


def test_a_generation_linked_to_another_folder_is_refused(kb_copy, tmp_path, embedder):
    other = Path(shutil.copytree(kb_copy, tmp_path / "other"))
    generation = json.loads((other / "manifest.json").read_text())["generation"]
    (kb_copy / "gen-000099").symlink_to(other / generation)
    _edit(kb_copy, lambda raw: raw.update(generation="gen-000099"))
    _refused(kb_copy, embedder, "field 'generation'", "outside the knowledge base")


def test_a_manifest_that_is_not_utf8_is_refused(kb_copy, embedder):
    path = kb_copy / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"generation"', b'"gen\xe9ration"'))
    _refused(kb_copy, embedder, "not UTF-8", "0xe9")


def test_a_folder_in_place_of_the_manifest_is_refused(kb_copy, embedder):
    (kb_copy / "manifest.json").unlink()
    (kb_copy / "manifest.json").mkdir()
    _refused(kb_copy, embedder, "manifest.json is a folder")


def _read_manifest(kb_dir: str, answer) -> None:
    try:
        manifest.read(Path(kb_dir))
        answer.send("read")
    except KnowledgeBaseCorruptError as error:
        answer.send(str(error))


def test_a_fifo_in_place_of_the_manifest_does_not_hang(kb_copy):
    (kb_copy / "manifest.json").unlink()
    os.mkfifo(kb_copy / "manifest.json")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_read_manifest, args=(str(kb_copy), send))
    child.start()
    try:
        assert receive.poll(60), "reading a FIFO manifest hung"
        assert "not a regular file" in receive.recv()
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("generation", 5, "field 'generation' is 5, expected a non-empty string"),
    ("generation", "gen-1", "field 'generation' is 'gen-1'"),
    ("generation", "gen-000001\n", "field 'generation'"),
    ("generation", "gen-\u0661\u0662\u0663\u0664\u0665\u0666", "field 'generation'"),  # Arabic-Indic digits
    ("documents", [], "field 'documents' is [], expected an object"),
    ("files", None, "field 'files' is None, expected an object"),
    ("hnsw_ef", -5, "field 'hnsw_ef' is -5, expected an integer from 1"),
    ("hnsw_ef", 24.0, "field 'hnsw_ef' is 24.0"),
    ("hnsw_ef", 1 << 70, "field 'hnsw_ef'"),
    ("hnsw_M", 1, "hnsw M=1 must be between 2 and 128"),
    ("hnsw_ef_construction", 3, "ef_construction=3 must be at least M"),
    ("dim", True, "field 'dim' is True"),
    ("dim", "384", "field 'dim' is '384'"),
    ("chunks", -1, "field 'chunks' is -1"),
    ("graph_elements", 0, "field 'graph_elements' is 0"),
    ("next_chunk_id", 0, "field 'next_chunk_id' is 0"),
    ("chunk_tokens", 4, "chunk_tokens=4 is too small"),
    ("overlap_tokens", 150, "overlap_tokens=150 must be between 0 and half"),
    ("embedder_model", "", "field 'embedder_model' is ''"),
    ("embedder_variant", ["fp32"], "field 'embedder_variant'"),
    ("format_version", "1", "field 'format_version' is '1', expected an integer"),
])
def test_each_field_is_checked(kb_copy, embedder, field, value, expected):
    _edit(kb_copy, lambda raw: raw.update({field: value}))
    _refused(kb_copy, embedder, expected)


def test_missing_and_unknown_fields_are_refused(kb_copy, embedder):
    _edit(kb_copy, lambda raw: raw.pop("hnsw_M"))
    _refused(kb_copy, embedder, "lacks field 'hnsw_M'")
    _edit(kb_copy, lambda raw: raw.update(hnsw_M=16, hnsw_m=16))
    _refused(kb_copy, embedder, "unknown field 'hnsw_m'")


def test_file_records_are_checked(kb_copy, embedder):
    _edit(kb_copy, lambda raw: raw["files"].update({"../../manifest.json": raw["files"].pop("ids.npy")}))
    _refused(kb_copy, embedder, "field 'files'", "exactly chunks.sqlite, vectors.npy, ids.npy, index.hnsw")


@pytest.mark.parametrize(("group", "key", "value", "expected"), [
    ("files", "sha256", "XYZ", "field 'files.index.hnsw.sha256' is 'XYZ', expected 64 lowercase hex digits"),
    ("files", "size_bytes", -3, "field 'files.index.hnsw.size_bytes' is -3"),
    ("files", "checksum", "x", "unknown field 'files.index.hnsw.checksum'"),
    ("documents", "chunks", 0, "chunks' is 0, expected an integer from 1"),
    ("documents", "sha256", 12, "sha256' is 12"),
])
def test_nested_records_are_checked(kb_copy, embedder, group, key, value, expected):
    def change(raw):
        name = "index.hnsw" if group == "files" else sorted(raw["documents"])[0]
        raw[group][name][key] = value

    _edit(kb_copy, change)
    _refused(kb_copy, embedder, expected)


def test_document_chunks_must_add_up(kb_copy, embedder):
    def change(raw):
        raw["documents"][sorted(raw["documents"])[0]]["chunks"] += 1

    _edit(kb_copy, change)
    _refused(kb_copy, embedder, "field 'chunks'", "the sum of the documents' chunks")


@pytest.mark.parametrize(("text", "expected"), [
    ("[]", "the top level is [], expected an object"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"format_version": NaN}', "field 'format_version' is nan"),
])
def test_text_that_is_not_a_manifest_is_refused(kb_copy, embedder, text, expected):
    (kb_copy / "manifest.json").write_text(text)
    _refused(kb_copy, embedder, expected)


def test_another_format_version_is_still_a_mismatch(kb_copy, embedder):
    _edit(kb_copy, lambda raw: raw.update(format_version=2))
    with pytest.raises(KnowledgeBaseMismatchError, match="format version 2"):
        KnowledgeBase.open(kb_copy, embedder=embedder)


def test_a_sound_manifest_reads_back_equal(built):
    current = manifest.read(built)
    assert manifest.Manifest.from_json(current.to_json(), built / "manifest.json") == current


# ------------------------------------------------------------------ checksums and their cache


@pytest.fixture
def count_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = manifest.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", counting)
    return hashed


def test_auto_hashes_once_then_trusts_unchanged_files(kb_copy, embedder, count_hashes, monkeypatch):
    monkeypatch.setattr(manifest, "SETTLED_S", 0.0)  # instead of waiting 2 s for the files to settle
    time.sleep(0.05)
    KnowledgeBase.open(kb_copy, embedder=embedder).close()
    assert sorted(count_hashes) == sorted(manifest.GENERATION_FILES)
    count_hashes.clear()
    KnowledgeBase.open(kb_copy, embedder=embedder).close()
    assert count_hashes == []
    KnowledgeBase.open(kb_copy, embedder=embedder, verify="full").close()
    assert sorted(count_hashes) == sorted(manifest.GENERATION_FILES)


def test_a_file_changed_after_caching_is_hashed_again(kb_copy, embedder, monkeypatch):
    monkeypatch.setattr(manifest, "SETTLED_S", 0.0)
    time.sleep(0.05)
    KnowledgeBase.open(kb_copy, embedder=embedder).close()
    time.sleep(0.05)  # a later timestamp than the cached one, on any clock granularity Linux uses
    path = manifest.read(kb_copy).generation
    target = kb_copy / path / "chunks.sqlite"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0x40  # inside the last page: sqlite still opens it
    target.write_bytes(bytes(data))
    _refused(kb_copy, embedder, "chunks.sqlite fails its sha256 check")


def test_fresh_files_are_not_cached(kb_copy, embedder, count_hashes):
    # Copied a moment ago: a second write within the timestamp granularity would be invisible.
    KnowledgeBase.open(kb_copy, embedder=embedder).close()
    count_hashes.clear()
    KnowledgeBase.open(kb_copy, embedder=embedder).close()
    assert sorted(count_hashes) == sorted(manifest.GENERATION_FILES)


def test_a_damaged_cache_only_costs_hashing(kb_copy, embedder, count_hashes, monkeypatch):
    monkeypatch.setattr(manifest, "SETTLED_S", 0.0)
    folder = kb_copy / manifest.read(kb_copy).generation
    for garbage in ("{not json", "[1, 2]", json.dumps({"ids.npy": {"sha256": "0" * 64}})):
        (folder / manifest.VERIFIED).write_text(garbage)
        count_hashes.clear()
        KnowledgeBase.open(kb_copy, embedder=embedder).close()
        assert sorted(count_hashes) == sorted(manifest.GENERATION_FILES)


def test_auto_checksums_a_knowledge_base_of_any_size(kb_copy, embedder):
    # An earlier "auto" checked only sizes above 64 MiB, so a flipped byte of the same size went
    # unseen; now any size is hashed (once, then known by its stat: test_a_verified_generation_...).
    assert not hasattr(manifest, "FULL_VERIFY_MAX_BYTES")
    target = kb_copy / manifest.read(kb_copy).generation / "chunks.sqlite"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0x40
    target.write_bytes(bytes(data))
    _refused(kb_copy, embedder, "chunks.sqlite fails its sha256 check")


def test_size_mode_hashes_nothing(kb_copy, embedder, count_hashes):
    KnowledgeBase.open(kb_copy, embedder=embedder, verify="size").close()
    assert count_hashes == []
