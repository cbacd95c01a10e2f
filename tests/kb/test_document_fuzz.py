"""Fuzz: documents a hostile user could hand the loader and the chunker.

Seeded, time-bounded (``BAKEOFF_DOC_FUZZ_SECONDS``, default 15; ``BAKEOFF_DOC_FUZZ_SEED``):
random bytes, mutated bundled documents (byte flips, truncations mid UTF-8 sequence,
NULs, lone surrogates encoded as bytes, unclosed fences, heading storms, one huge line)
go through ``documents.inspect`` and ``iter_blocks`` + ``chunk_blocks`` with the real
embedder's tokenizer. Each must end as a typed ``DocumentError`` (the file is skipped
with a reason) or as chunks whose text is exactly the document at their spans, in
order, within the token budget. Pure Python, so a crash is impossible; a hang is
bounded by a per-case deadline.
"""

from __future__ import annotations

import os
import random
import time

from engine.errors import DocumentError
from engine.kb import documents
from engine.kb.chunking import ChunkingConfig, chunk_blocks
from engine.questions.qa import BUNDLED_SET

SEED = int(os.environ.get("BAKEOFF_DOC_FUZZ_SEED", "3"))
SECONDS = float(os.environ.get("BAKEOFF_DOC_FUZZ_SECONDS", "15"))
CASE_DEADLINE_S = 20.0
SAMPLES = [p.read_bytes() for p in sorted((BUNDLED_SET / "docs").glob("*.md"))[:8]]


def _hostile(rng: random.Random) -> bytes:
    base = bytearray(rng.choice(SAMPLES))
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 4000))
    if kind == 1:
        for _ in range(rng.randrange(1, 20)):
            base[rng.randrange(len(base))] = rng.randrange(256)
    elif kind == 2:
        return bytes(base[: rng.randrange(1, len(base))])  # may cut a UTF-8 sequence
    elif kind == 3:
        base[rng.randrange(len(base))] = 0
    elif kind == 4:
        return bytes(base) + "\ud800".encode("utf-8", "surrogatepass")
    elif kind == 5:
        return bytes(base) + b"\n```python\n" + b"x = 1\n" * rng.randrange(1, 500)  # never closed
    elif kind == 6:
        return b"".join(b"#" * rng.randrange(1, 9) + b" h\n" for _ in range(rng.randrange(1, 3000)))
    elif kind == 7:
        return b"word " * rng.randrange(1, 60000)  # one huge line, no sentence end
    else:
        return "".join(chr(rng.choice([rng.randrange(32, 0xD7FF), rng.randrange(0xE000, 0x10FFFF), 10, 13, 9]))
                       for _ in range(rng.randrange(1, 3000))).encode("utf-8")
    return bytes(base)


def test_hostile_documents_are_skipped_with_a_reason_or_chunked_exactly(tmp_path, embedder):
    rng = random.Random(SEED)
    config = ChunkingConfig(chunk_tokens=64, overlap_tokens=8)
    deadline = time.monotonic() + SECONDS
    counts = {"skipped": 0, "chunked": 0}
    cases = 0
    while time.monotonic() < deadline:
        cases += 1
        path = tmp_path / f"doc{cases % 4}.md"
        path.write_bytes(_hostile(rng))
        started = time.monotonic()
        try:
            documents.inspect(str(path), max_document_mb=8)
        except DocumentError as error:
            assert str(error), "a skip says why"
            counts["skipped"] += 1
            continue
        text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
        chunks = list(chunk_blocks(documents.iter_blocks(str(path)), embedder.token_offsets, config))
        assert time.monotonic() - started < CASE_DEADLINE_S, "chunking must not hang"
        last_start = -1
        for chunk in chunks:
            assert text[chunk.start_char:chunk.end_char] == chunk.text
            assert chunk.start_char >= last_start and chunk.text.strip()
            assert chunk.n_tokens <= config.chunk_tokens
            last_start = chunk.start_char
        counts["chunked"] += 1
    print(f"document fuzz, seed {SEED}, {SECONDS:.0f} s: {cases} cases, {counts}")
    assert cases >= 20 and counts["skipped"] and counts["chunked"]


def test_a_named_pipe_is_skipped_as_not_a_regular_file_not_reported_missing(tmp_path):
    pipe = tmp_path / "pipe.md"
    os.mkfifo(pipe)
    sources, skipped = documents.discover([pipe])
    assert sources == [] and len(skipped) == 1 and "not a regular file" in skipped[0].reason
