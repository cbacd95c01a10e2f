"""The manifest: the one file that says what a knowledge base folder holds.

``DIR/manifest.json`` names the current generation folder and the size and sha256 of
each of its files, the embedder the vectors came from, the chunking and HNSW
parameters, and per-document checksums. It is replaced atomically
(``engine._files.write_text_atomic``: a temporary file, fsync, ``os.replace``, fsync
the folder), so a reader sees either the old or the new knowledge base, never a mix.

Nothing in it is trusted: ``read`` checks every field's type and range against the
schema below (``Manifest.from_json``), and that the generation it names is a
``gen-NNNNNN`` folder inside ``DIR``; anything else is ``KnowledgeBaseCorruptError``
naming the field.

Checksums (``verify_files``) are cached per generation in ``gen-NNNNNN/.verified.json``:
after a file's sha256 has been checked once, a later open with ``verify="auto"`` trusts
it while the file keeps its device, inode, size, mtime and ctime, so only the first open
of a large knowledge base pays for hashing (about 1 s per GiB). ctime changes on every
write, even one that restores the mtime; a file changed less than ``SETTLED_S`` before
it was hashed is not cached, since a second write within the file system's timestamp
granularity would leave no trace. The structural checks that keep a damaged file from
crashing the process run on every open regardless (``engine/kb/index.py``).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

from engine._files import sha256_file, write_text_atomic
from engine.errors import InputError, KnowledgeBaseCorruptError, KnowledgeBaseError, KnowledgeBaseMismatchError
from engine.kb.chunking import ChunkingConfig
from engine.kb.index import HnswConfig, check_array_headers
from engine.kb.store import REBUILD_HINT

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The files every generation folder holds, all recorded in the manifest.
GENERATION_FILES = ("chunks.sqlite", "vectors.npy", "ids.npy", "index.hnsw")
#: A generation folder's name (ASCII digits only: ``re``'s ``\d`` also matches other scripts' digits).
GENERATION_NAME = re.compile(r"gen-[0-9]{6}")
VERIFY_MODES = ("size", "full", "auto")
#: Checksum cache of a generation folder (see the module docstring).
VERIFIED = ".verified.json"
SETTLED_S = 2.0
#: A manifest this large is damaged (100k documents take about 25 MB).
MAX_MANIFEST_BYTES = 256 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_INT = (1 << 63) - 1


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
        """Parse and check against the schema: every field present, of its type and in its range.

        Raises:
            KnowledgeBaseMismatchError: another format version.
            KnowledgeBaseCorruptError: not JSON, or naming the first field that is missing,
                unknown, of the wrong type or out of range.
        """
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, or an integer of 5000 digits
            raise KnowledgeBaseCorruptError(f"{where} is not valid JSON ({_short(error)}): {REBUILD_HINT}") from None
        top = _Fields(raw, where, "")
        version = top.take("format_version")
        if type(version) is not int:
            top.fail("format_version", version, "an integer")
        if version != FORMAT_VERSION:
            raise KnowledgeBaseMismatchError(
                f"{where} is knowledge base format version {version}, this engine reads version "
                f"{FORMAT_VERSION}: {REBUILD_HINT}")
        generation = top.text("generation")
        if not GENERATION_NAME.fullmatch(generation):
            top.fail("generation", generation, "a folder name gen-NNNNNN (six digits)")
        embedder_model, embedder_variant = top.text("embedder_model"), top.text("embedder_variant")
        dim = top.integer("dim", 1, 1 << 16)
        chunk_tokens = top.integer("chunk_tokens", 1, 1 << 20)
        overlap_tokens = top.integer("overlap_tokens", 0, 1 << 20)
        hnsw = HnswConfig(top.integer("hnsw_M", 1, 1 << 20), top.integer("hnsw_ef_construction", 1, 1 << 20),
                          top.integer("hnsw_ef", 1, 1 << 20))
        chunks = top.integer("chunks", 0, (1 << 32) - 1)
        # hnswlib numbers elements with 32 bits; every live chunk is one element.
        graph_elements = top.integer("graph_elements", chunks, (1 << 32) - 1)
        next_chunk_id = top.integer("next_chunk_id", chunks, _MAX_INT)
        try:
            # The embedder's token limit is checked against the embedder on open, not here.
            ChunkingConfig(chunk_tokens, overlap_tokens).validate(chunk_tokens + 2)
            hnsw.validate()
        except InputError as error:
            raise KnowledgeBaseCorruptError(f"{where}: {error} (the manifest's value is damaged): "
                                            f"{REBUILD_HINT}") from None
        documents = {name: DocumentRecord(**_record(top, "documents", name, record, chunks=True))
                     for name, record in top.mapping("documents").items()}
        files = {name: FileRecord(**_record(top, "files", name, record, chunks=False))
                 for name, record in top.mapping("files").items()}
        if sorted(files) != sorted(GENERATION_FILES):
            top.fail("files", sorted(files), f"exactly {', '.join(GENERATION_FILES)}")
        if (total := sum(d.chunks for d in documents.values())) != chunks:
            top.fail("chunks", chunks, f"the sum of the documents' chunks ({total})")
        top.finish()
        return cls(version, generation, embedder_model, embedder_variant, dim, chunk_tokens, overlap_tokens,
                   hnsw.M, hnsw.ef_construction, hnsw.ef, chunks, graph_elements, next_chunk_id, documents, files)


class _Fields:
    """Takes the fields of one JSON object, failing with ``KnowledgeBaseCorruptError`` that names them."""

    def __init__(self, raw: object, where: Path, prefix: str) -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(raw, dict):
            self.fail("", raw, "an object")
        self._raw: dict = dict(raw)

    def fail(self, name: str, value: object, expected: str) -> NoReturn:
        full = f"{self.prefix}{name}".rstrip(".")
        what = f"field '{full}'" if full else "the top level"
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise KnowledgeBaseCorruptError(f"{self.where}: {what} is {shown}, expected {expected}: {REBUILD_HINT}")

    def take(self, name: str) -> object:
        if name not in self._raw:
            raise KnowledgeBaseCorruptError(f"{self.where} lacks field '{self.prefix}{name}': {REBUILD_HINT}")
        return self._raw.pop(name)

    def integer(self, name: str, low: int, high: int) -> int:
        value = self.take(name)
        if type(value) is not int or not low <= value <= high:  # bool is an int subclass: refused too
            self.fail(name, value, f"an integer from {low} to {high}")
        return value

    def text(self, name: str, pattern: re.Pattern[str] | None = None, expected: str = "a non-empty string") -> str:
        value = self.take(name)
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
            self.fail(name, value, expected)
        return value

    def mapping(self, name: str) -> dict:
        value = self.take(name)
        if not isinstance(value, dict):
            self.fail(name, value, "an object")
        return value

    def finish(self) -> None:
        """Refuse fields the schema does not know (a typo or another writer's format)."""
        if self._raw:
            name = sorted(self._raw)[0]
            raise KnowledgeBaseCorruptError(f"{self.where} has unknown field '{self.prefix}{name}': {REBUILD_HINT}")


def _record(top: _Fields, group: str, name: object, raw: object, *, chunks: bool) -> dict:
    """The fields of a ``files`` or ``documents`` entry."""
    if not isinstance(name, str) or not name:
        top.fail(group, name, "names that are non-empty strings")
    fields = _Fields(raw, top.where, f"{group}.{name}.")
    out = {"sha256": fields.text("sha256", _SHA256, "64 lowercase hex digits"),
           "size_bytes": fields.integer("size_bytes", 0, _MAX_INT)}
    if chunks:
        out["chunks"] = fields.integer("chunks", 1, (1 << 32) - 1)
    fields.finish()
    return out


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 80 else text[:77] + "..."


def read(directory: Path) -> Manifest:
    """Read and check ``directory/manifest.json`` (see ``Manifest.from_json``).

    Raises:
        KnowledgeBaseCorruptError: no manifest (not a knowledge base, or never finished building),
            not a regular file, not UTF-8, not JSON, a field missing or out of its schema, or a
            generation outside ``directory``.
        KnowledgeBaseMismatchError: another format version.
        KnowledgeBaseError: the manifest exists but cannot be read (permissions, I/O error).
    """
    path = directory / MANIFEST
    try:
        # O_NONBLOCK: a FIFO in its place must fail below, not wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KnowledgeBaseCorruptError(
            f"{directory} has no {MANIFEST}: it is not a knowledge base (or its first build did not "
            f"finish): build it with `bakeoff index DOCS... --kb {directory}`") from None
    except OSError as error:
        raise KnowledgeBaseError(f"{path} cannot be read ({error.strerror}): check its permissions") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise KnowledgeBaseCorruptError(f"{path} is {kind}: {REBUILD_HINT}")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise KnowledgeBaseCorruptError(f"{path} is {info.st_size} bytes, far more than any manifest: "
                                            f"{REBUILD_HINT}")
        blocks = []
        while block := os.read(fd, 1 << 20):
            blocks.append(block)
        data = b"".join(blocks)
    except OSError as error:
        raise KnowledgeBaseError(f"{path} cannot be read ({error.strerror}): check the disk") from None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KnowledgeBaseCorruptError(f"{path} is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}): "
                                        f"{REBUILD_HINT}") from None
    current = Manifest.from_json(text, path)
    _check_inside(directory, current.generation, path)
    return current


def _check_inside(directory: Path, generation: str, where: Path) -> None:
    """The generation folder must be a child of ``directory`` (not a link to another knowledge base)."""
    real = os.path.realpath(directory / generation)
    if os.path.dirname(real) != os.path.realpath(directory):
        raise KnowledgeBaseCorruptError(
            f"{where}: field 'generation' is {generation!r}, which leads to {real}, outside the knowledge base "
            f"{directory}: {REBUILD_HINT}")


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

    ``verify`` is ``"size"`` (each file is a regular file of the recorded size: catches
    missing and truncated files in microseconds), ``"full"`` (sizes and sha256, about
    1 s per GiB) or ``"auto"`` (``"full"``, but a file whose sha256 was checked before
    and that has not changed since, by its ``os.stat``, is not hashed again; see the
    module docstring). Whatever the mode, the ``.npy`` headers are checked here
    (``index.check_array_headers``) and ``index.load_graph`` checks the structure of the
    index and the arrays, which is what keeps a damaged file from crashing a search.

    Raises:
        InputError: ``verify`` is none of the three.
        KnowledgeBaseCorruptError: naming the first file that is missing, not a regular
            file, of the wrong size, with a damaged ``.npy`` header or the wrong checksum.
    """
    if verify not in VERIFY_MODES:
        raise InputError(f"verify={verify!r}: use 'size', 'full' or 'auto'")
    stats = {}
    for name, record in files.items():
        path = folder / name
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise KnowledgeBaseCorruptError(f"{path} is missing: {REBUILD_HINT}") from None
        except OSError as error:
            raise KnowledgeBaseError(f"{path} cannot be read ({error.strerror}): check its permissions") from None
        if not stat.S_ISREG(info.st_mode):
            raise KnowledgeBaseCorruptError(f"{path} is not a regular file: {REBUILD_HINT}")
        if info.st_size != record.size_bytes:
            raise KnowledgeBaseCorruptError(
                f"{path} is {info.st_size} bytes, the manifest says {record.size_bytes} (truncated or "
                f"overwritten): {REBUILD_HINT}")
        stats[name] = info
    # Before anyone np.loads them: numpy's header parser has failure modes of its own.
    check_array_headers(folder)
    if verify == "size":
        return
    cache = _read_verified(folder)
    started_ns = time.time_ns()
    settled: dict[str, dict] = {}
    for name, record in files.items():
        identity = _identity(stats[name], record.sha256)
        if verify == "auto" and cache.get(name) == identity:
            settled[name] = identity
            continue
        if sha256_file(folder / name) != record.sha256:
            raise KnowledgeBaseCorruptError(f"{folder / name} fails its sha256 check (corrupted): {REBUILD_HINT}")
        if started_ns - max(stats[name].st_mtime_ns, stats[name].st_ctime_ns) > SETTLED_S * 1e9:
            settled[name] = identity
    if settled != cache:
        _write_verified(folder, settled)


def _identity(info: os.stat_result, sha256: str) -> dict:
    """What must stay the same for a checked file to be trusted again without hashing."""
    return {"sha256": sha256, "device": info.st_dev, "inode": info.st_ino, "size_bytes": info.st_size,
            "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


def _read_verified(folder: Path) -> dict[str, dict]:
    """The checksum cache; empty when missing or unreadable (it only ever saves work)."""
    try:
        raw = json.loads((folder / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _write_verified(folder: Path, settled: dict[str, dict]) -> None:
    try:
        write_text_atomic(folder / VERIFIED, json.dumps(settled, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only knowledge base: the next open hashes again
