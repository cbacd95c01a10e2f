"""The manifest: the one file that says what a knowledge base folder holds.

``DIR/manifest.json`` names the current generation folder and the size and sha256 of
each of its files, the embedder the vectors came from, the chunking and HNSW
parameters, and per-document checksums. It is replaced atomically
(``engine._files.write_text_atomic``: a temporary file, fsync, ``os.replace``, fsync
the folder), so a reader sees either the old or the new knowledge base, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine._files import sha256_file, write_text_atomic
from engine.errors import InputError, KnowledgeBaseCorruptError, KnowledgeBaseMismatchError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FULL_VERIFY_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class FileRecord:
    """A file of a generation folder as the manifest records it."""

    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class DocumentRecord:
    """A document in the knowledge base: content checksum and how many chunks it gave."""

    sha256: str
    size_bytes: int
    chunks: int


@dataclass(frozen=True)
class Manifest:
    """Everything ``manifest.json`` records (see module docstring)."""

    format_version: int
    generation: str
    embedder_model: str
    embedder_variant: str
    dim: int
    chunk_tokens: int
    overlap_tokens: int
    hnsw_M: int
    hnsw_ef_construction: int
    hnsw_ef: int
    chunks: int
    graph_elements: int
    next_chunk_id: int
    documents: dict[str, DocumentRecord] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise (stable key order, so equal manifests are equal files)."""
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        """Parse; raises ``KnowledgeBaseMismatchError`` for another format version and
        ``KnowledgeBaseCorruptError`` for anything unreadable."""
        try:
            raw = json.loads(text)
            version = raw.get("format_version")
        except (json.JSONDecodeError, AttributeError) as error:
            raise KnowledgeBaseCorruptError(f"{where} is not valid JSON ({error}): rebuild with `bakeoff index`") from None
        if version != FORMAT_VERSION:
            raise KnowledgeBaseMismatchError(
                f"{where} is knowledge base format version {version}, this engine reads version "
                f"{FORMAT_VERSION}: rebuild with `bakeoff index`")
        try:
            raw["documents"] = {k: DocumentRecord(**v) for k, v in raw["documents"].items()}
            raw["files"] = {k: FileRecord(**v) for k, v in raw["files"].items()}
            return cls(**raw)
        except (KeyError, TypeError) as error:
            raise KnowledgeBaseCorruptError(f"{where} lacks or has wrong fields ({error}): "
                                            f"rebuild with `bakeoff index`") from None


def read(directory: Path) -> Manifest:
    """Read ``directory/manifest.json``.

    Raises:
        KnowledgeBaseCorruptError: no manifest (not a knowledge base, or never finished building).
        KnowledgeBaseMismatchError: another format version.
    """
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KnowledgeBaseCorruptError(
            f"{directory} has no {MANIFEST}: it is not a knowledge base (or its first build did not "
            f"finish): build it with `bakeoff index`") from None
    return Manifest.from_json(text, path)


def write(directory: Path, manifest: Manifest) -> None:
    """Atomically replace ``directory/manifest.json`` and make the change durable."""
    write_text_atomic(directory / MANIFEST, manifest.to_json())


def record_files(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    """fsync each file and record its size and sha256."""
    out = {}
    for name in names:
        path = folder / name
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        out[name] = FileRecord(path.stat().st_size, sha256_file(path))
    return out


def verify_files(folder: Path, files: dict[str, FileRecord], verify: str) -> None:
    """Check a generation's files against the manifest.

    ``verify`` is ``"size"`` (sizes only: catches missing and truncated files in
    microseconds), ``"full"`` (sizes and sha256) or ``"auto"`` (full when the files
    total at most 64 MiB, about 50 ms; sizes only above that).

    Raises:
        InputError: ``verify`` is none of the three.
        KnowledgeBaseCorruptError: naming the first file that is missing, has the wrong
            size or the wrong checksum.
    """
    if verify not in ("size", "full", "auto"):
        raise InputError(f"verify={verify!r}: use 'size', 'full' or 'auto'")
    for name, record in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise KnowledgeBaseCorruptError(f"{path} is missing: rebuild with `bakeoff index`") from None
        if size != record.size_bytes:
            raise KnowledgeBaseCorruptError(
                f"{path} is {size} bytes, the manifest says {record.size_bytes} (truncated or "
                f"overwritten): rebuild with `bakeoff index`")
    total = sum(r.size_bytes for r in files.values())
    if verify == "full" or (verify == "auto" and total <= FULL_VERIFY_MAX_BYTES):
        for name, record in files.items():
            if sha256_file(folder / name) != record.sha256:
                raise KnowledgeBaseCorruptError(
                    f"{folder / name} fails its sha256 check (corrupted): rebuild with `bakeoff index`")
