"""Finding and reading the documents a knowledge base is built from.

A document is a ``.txt`` or ``.md`` file of UTF-8 text. ``discover`` turns the
caller's files, folders and globs into a sorted list of paths; ``inspect`` reads a
file once in blocks (never whole) to validate it and compute its sha256;
``iter_blocks`` streams the decoded text in blocks cut at line breaks, with the
character offset of each block, so a 50 MB file never has to be tokenized at once.

Files that cannot be used are *skipped* with a reason (``SkippedFile``) rather than
failing the whole build; ``strict=True`` in the builder turns a skip into a
``DocumentError``. That includes files larger than the builder's ``max_document_mb``
(``MAX_DOCUMENT_MB`` by default): streaming keeps memory bounded at any size, but
embedding is the cost. An 8 MB document is ~2M tokens, ~10k chunks of 200 tokens:
minutes at the tens to hundreds of chunks/s a CPU embeds (bench/bench_index.py
measures it), while 50 MB would take hours. So a big file is refused at once, by its
size, before it is read, and the reason says how to raise the limit.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DocumentError, InputError

SUFFIXES = (".txt", ".md", ".markdown")
_READ_BYTES = 1 << 20
_BLOCK_CHARS = 1 << 18
MAX_DOCUMENT_MB = 8.0


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not indexed, and why (empty, binary, not UTF-8, duplicate...)."""

    source: str
    reason: str


@dataclass(frozen=True)
class DocumentInfo:
    """A validated document: its absolute path (the ``source`` of its chunks), sha256 and size."""

    source: str
    sha256: str
    size_bytes: int


def source_name(path: str | os.PathLike[str]) -> str:
    """The name a file is known by in a knowledge base: its absolute, normalised path."""
    return str(Path(os.path.abspath(os.fspath(path))))


def discover(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> tuple[list[str], list[SkippedFile]]:
    """Expand files, folders (recursively) and glob patterns into document paths.

    Args:
        paths: one path or many; each a file, a folder, or a glob such as ``docs/**/*.md``.

    Returns:
        ``(sources, skipped)``: absolute paths of ``.txt``/``.md`` files, sorted and
        without repeats; and the named files that were skipped for their suffix.

    Raises:
        InputError: a path does not exist and matches nothing as a glob.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[str, None] = {}
    skipped: list[SkippedFile] = []
    for raw in paths:
        text = os.fspath(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in SUFFIXES and not _hidden(child, path):
                    found[source_name(child)] = None
        elif path.is_file():
            if path.suffix.lower() in SUFFIXES:
                found[source_name(path)] = None
            else:
                skipped.append(SkippedFile(source_name(path), f"not a .txt or .md file ({path.suffix or 'no suffix'})"))
        elif path.exists():  # a FIFO, socket or device: reading it could block or never end
            skipped.append(SkippedFile(source_name(path), "not a regular file (a pipe, socket or device)"))
        elif glob.has_magic(text):
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
                if os.path.isfile(match) and Path(match).suffix.lower() in SUFFIXES:
                    found[source_name(match)] = None
        else:
            raise InputError(f"{text}: no such file or folder: give .txt/.md files, folders or globs")
    return sorted(found), skipped


def _hidden(child: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in child.relative_to(root).parts)


def inspect(source: str, max_document_mb: float | None = None) -> DocumentInfo:
    """Validate a document and compute its sha256, reading it in 1 MiB blocks.

    Args:
        source: path of the file.
        max_document_mb: largest size accepted, in MiB; ``None`` for no limit. Checked
            from the file's size before anything is read.

    Raises:
        DocumentError: the file is unreadable, larger than ``max_document_mb``, empty,
            binary (holds NUL bytes) or not valid UTF-8; the message says which and where.
    """
    if max_document_mb is not None:
        check_size(source, max_document_mb)
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    size = 0
    has_text = False
    try:
        with open(source, "rb") as handle:
            while block := handle.read(_READ_BYTES):
                if b"\x00" in block:
                    raise DocumentError(f"{source}: binary file (holds NUL bytes): only UTF-8 text is indexed")
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as error:
                    raise DocumentError(
                        f"{source}: not valid UTF-8 near byte {size + error.start}: "
                        f"convert it, e.g. `iconv -f latin1 -t utf-8`"
                    ) from None
                has_text = has_text or bool(text.replace("\ufeff", "").strip())
                digest.update(block)
                size += len(block)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise DocumentError(f"{source}: not valid UTF-8 (truncated sequence at the end)") from None
    except OSError as error:
        raise DocumentError(f"{source}: cannot read ({error.strerror})") from None
    if not has_text:
        raise DocumentError(f"{source}: empty (no text)")
    return DocumentInfo(source, digest.hexdigest(), size)


def check_size(source: str, max_document_mb: float) -> None:
    """Raise ``DocumentError`` if ``source`` is larger than ``max_document_mb`` MiB."""
    try:
        size = os.path.getsize(source)
    except OSError as error:
        raise DocumentError(f"{source}: cannot read ({error.strerror})") from None
    if size > max_document_mb * (1 << 20):
        raise DocumentError(
            f"{source}: {size / (1 << 20):.1f} MB is over the {max_document_mb:g} MB limit for one document "
            f"(embedding it would take long): split it, or raise the limit with "
            f"max_document_mb={_suggest(size)} (KnowledgeBase.build/add)")


def _suggest(size: int) -> int:
    """A round limit in MiB that admits a file of ``size`` bytes."""
    mb = size / (1 << 20)
    return int(-(-mb // 8) * 8) if mb > 0 else 1


def iter_blocks(source: str, block_chars: int = _BLOCK_CHARS) -> Iterator[tuple[int, str]]:
    """Stream a validated document as ``(char_offset, text)`` blocks of about ``block_chars``.

    Blocks end after a paragraph break when there is one, else after a line break,
    else at the size limit, so that chunk boundaries between blocks fall where a
    reader would put them. A leading UTF-8 BOM is dropped (offsets count from after it).
    """
    offset = 0
    pending = ""
    first = True
    with open(source, encoding="utf-8", errors="strict", newline="") as handle:
        while True:
            data = handle.read(block_chars)
            if first:
                data = data.removeprefix("\ufeff")
                first = False
            pending += data
            if not data:
                break
            while len(pending) >= block_chars:
                cut = _cut(pending, block_chars)
                yield offset, pending[:cut]
                offset += cut
                pending = pending[cut:]
    if pending:
        yield offset, pending


def _cut(text: str, limit: int) -> int:
    for mark in ("\n\n", "\n"):
        at = text.rfind(mark, limit // 2, limit)
        if at >= 0:
            return at + len(mark)
    return limit
