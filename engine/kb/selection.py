"""Which documents a write takes: unchanged ones are left alone, unusable and duplicate ones skipped.

A document is known by its absolute path and its content's sha256. ``unchanged``
says whether a path already indexed still holds the same bytes; ``inspect_all``
checks the rest and keeps one path per content, so the same text never fills two of
a search's hits.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine._files import sha256_file
from engine.errors import DocumentError
from engine.kb import documents
from engine.kb.documents import DocumentInfo, SkippedFile
from engine.kb.manifest import DocumentRecord, Manifest


def unchanged(source: str, current: Manifest) -> bool:
    """True when ``source``, indexed in ``current``, still has the recorded size and sha256."""
    record = current.documents[source]
    try:
        if os.path.getsize(source) != record.size_bytes:
            return False
        return sha256_file(Path(source)) == record.sha256
    except OSError:
        return False


def inspect_all(sources: list[str], existing: dict[str, DocumentRecord], strict: bool,
                max_document_mb: float | None) -> tuple[list[DocumentInfo], list[SkippedFile]]:
    """Validate documents; skip (or, ``strict``, raise ``DocumentError`` for) unusable, too large and
    duplicate ones. ``existing`` are the documents indexed already (those not in ``sources`` stay)."""
    by_content = {record.sha256: source for source, record in existing.items() if source not in sources}
    docs, skipped = [], []
    for source in sources:
        try:
            doc = documents.inspect(source, max_document_mb)
        except DocumentError as error:
            if strict:
                raise
            skipped.append(SkippedFile(source, str(error).removeprefix(f"{source}: ")))
            continue
        if doc.sha256 in by_content:
            skipped.append(SkippedFile(source, f"same content as {by_content[doc.sha256]} (indexed once)"))
            continue
        by_content[doc.sha256] = source
        docs.append(doc)
    return docs, skipped
