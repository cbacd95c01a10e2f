"""Chunking with the real tokenizer: sizes, spans, headings, overlap, streaming."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from engine.errors import InputError
from engine.kb import documents
from engine.kb.chunking import ChunkingConfig, chunk_blocks, chunk_text

MANUAL = """# Manual

Intro sentence one. Intro sentence two.

## Safety

""" + " ".join(f"Safety rule number {i} says keep the pump dry." for i in range(40)) + """

```
# not a heading inside code
```

## Updating

Open the app. Tap update.
"""


def test_chunks_fit_the_budget_and_spans_point_at_the_text(embedder):
    config = ChunkingConfig(chunk_tokens=40, overlap_tokens=10)
    chunks = chunk_text(MANUAL, embedder.token_offsets, config)
    assert len(chunks) > 5
    for chunk in chunks:
        assert MANUAL[chunk.start_char:chunk.end_char] == chunk.text
        assert embedder.count_tokens(chunk.text) <= config.chunk_tokens
        assert chunk.text == chunk.text.strip()


def test_each_chunk_records_its_heading_trail_and_never_spans_two_sections(embedder):
    chunks = chunk_text(MANUAL, embedder.token_offsets, ChunkingConfig(40, 10))
    headings = [c.heading for c in chunks]
    assert headings[0] == "Manual"
    assert "Manual > Safety" in headings
    assert headings[-1] == "Manual > Updating"
    assert all("Safety rule" not in c.text for c in chunks if c.heading != "Manual > Safety")
    assert any("# not a heading" in c.text for c in chunks if c.heading == "Manual > Safety")


def test_consecutive_chunks_of_a_long_section_overlap_by_whole_sentences(embedder):
    chunks = [c for c in chunk_text(MANUAL, embedder.token_offsets, ChunkingConfig(40, 12))
              if c.heading == "Manual > Safety"]
    assert len(chunks) >= 3
    for before, after in zip(chunks, chunks[1:]):
        assert after.start_char < before.end_char, "expected overlap"
        assert after.start_char >= before.start_char


def test_no_overlap_when_asked(embedder):
    chunks = chunk_text(MANUAL, embedder.token_offsets, ChunkingConfig(40, 0))
    for before, after in zip(chunks, chunks[1:]):
        assert after.start_char >= before.end_char


def test_a_sentence_longer_than_a_chunk_is_cut_between_tokens(embedder):
    text = "word " * 500
    chunks = chunk_text(text, embedder.token_offsets, ChunkingConfig(50, 10), markdown=False)
    assert len(chunks) == 13  # 500 tokens, windows of 50 starting every 40 tokens: 0, 40, ..., 480
    assert all(embedder.count_tokens(c.text) <= 50 for c in chunks)
    assert chunks[-1].end_char == len(text.rstrip())


def test_unicode_spans_are_character_offsets(embedder):
    text = "Café déjà vu. 日本語のテキストです。 Ünïcode naïve façade! " * 30
    for chunk in chunk_text(text, embedder.token_offsets, ChunkingConfig(30, 5), markdown=False):
        assert text[chunk.start_char:chunk.end_char] == chunk.text


@pytest.mark.parametrize("tokens, overlap", [(4, 0), (300, 10), (40, 30), (40, -1)])
def test_bad_sizes_are_input_errors(tokens, overlap):
    with pytest.raises(InputError):
        ChunkingConfig(tokens, overlap).validate(max_tokens=256)


def test_blocks_of_a_large_file_stream_with_bounded_memory(tmp_path: Path):
    path = tmp_path / "big.txt"
    paragraph = ("The pump moves water from the barrel to the beds. " * 8 + "\n\n").encode()
    with open(path, "wb") as handle:
        for _ in range((50 << 20) // len(paragraph) + 1):
            handle.write(paragraph)
    tracemalloc.start()
    info = documents.inspect(str(path))
    total = 0
    expected_offset = 0
    for offset, block in documents.iter_blocks(str(path)):
        assert offset == expected_offset
        expected_offset += len(block)
        total += len(block)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.size_bytes == path.stat().st_size >= 50 << 20
    assert total == info.size_bytes  # ASCII: one character per byte
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB: the file was read whole"


def test_chunking_streams_a_multi_megabyte_file_with_bounded_memory(tmp_path: Path, embedder):
    path = tmp_path / "long.md"
    section = "## Part\n\n" + "The hub relays commands to every pump in the garden. " * 400 + "\n\n"
    path.write_text("# Long\n\n" + section * 100, encoding="utf-8")  # ~2 MB
    text = path.read_text(encoding="utf-8")
    tracemalloc.start()
    count = 0
    for chunk in chunk_blocks(documents.iter_blocks(str(path), block_chars=1 << 16), embedder.token_offsets,
                              ChunkingConfig(200, 40)):
        assert text[chunk.start_char:chunk.end_char] == chunk.text
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count > 1000
    assert peak < 64 << 20


def test_chunk_boundaries_end_before_a_closing_quote_as_built_knowledge_bases_do(embedder):
    # Kept on purpose (see engine.text.split_units): moving it changes every built KB's chunks.
    text = '# Facts\n\n- Company motto: "Every drop where it is needed."\n\n## History\n\nFounded in 2019.'
    chunks = chunk_text(text, embedder.token_offsets)
    assert [c.text for c in chunks] == ['- Company motto: "Every drop where it is needed.', "Founded in 2019."]
