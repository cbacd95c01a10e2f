"""Token-aware chunking: cut documents into passages the embedder sees whole.

Sizes are counted with the embedder's own tokenizer (``token_offsets``), so a chunk
of ``chunk_tokens`` tokens is never truncated by the embedder. Cuts prefer, in order:
Markdown headings (a chunk never spans two sections), paragraph and list-item breaks,
sentence ends (the units of ``engine.text.split_units``, the splitter sentence
selection shares); a single sentence longer than a chunk is cut between tokens. Chunks
overlap by up to ``overlap_tokens`` tokens of whole sentences (or of tokens, inside
an over-long sentence). Each chunk records the trail of headings above it
("Manual > Safety") and its character span in the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from engine.errors import InputError
from engine.text import split_units

TokenOffsets = Callable[[str], list[tuple[int, int]]]

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class ChunkingConfig:
    """How documents are cut. ``chunk_tokens`` must leave room for the embedder's specials.

    Attributes:
        chunk_tokens: most tokens in one chunk (embedder tokenizer, no specials).
        overlap_tokens: most tokens repeated from the end of one chunk at the start of the next.
    """

    chunk_tokens: int = 200
    overlap_tokens: int = 40

    def validate(self, max_tokens: int) -> None:
        """Raise ``InputError`` unless the sizes fit an embedder of ``max_tokens`` tokens."""
        if self.chunk_tokens < 8:
            raise InputError(f"chunk_tokens={self.chunk_tokens} is too small: use at least 8")
        if self.chunk_tokens > max_tokens - 2:
            raise InputError(
                f"chunk_tokens={self.chunk_tokens} does not fit the embedder's {max_tokens} tokens "
                f"(2 are its special tokens): use at most {max_tokens - 2}"
            )
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2 + 1:
            raise InputError(
                f"overlap_tokens={self.overlap_tokens} must be between 0 and half of chunk_tokens "
                f"({self.chunk_tokens // 2})"
            )


@dataclass(frozen=True)
class Chunk:
    """One passage: its text, character span ``[start_char, end_char)`` in the document, heading trail."""

    text: str
    start_char: int
    end_char: int
    heading: str
    n_tokens: int


def chunk_text(text: str, token_offsets: TokenOffsets, config: ChunkingConfig = ChunkingConfig(),
               *, markdown: bool = True) -> list[Chunk]:
    """Chunk one string held in memory (see ``chunk_blocks`` for streaming)."""
    return list(chunk_blocks([(0, text)], token_offsets, config, markdown=markdown))


def chunk_blocks(blocks: Iterable[tuple[int, str]], token_offsets: TokenOffsets,
                 config: ChunkingConfig = ChunkingConfig(), *, markdown: bool = True) -> Iterator[Chunk]:
    """Chunk a document given as ``(char_offset, text)`` blocks (``documents.iter_blocks``).

    Memory stays bounded by one block: each block is split into sections and each
    section is tokenized on its own. Headings carry over from one block to the next.

    Args:
        blocks: consecutive pieces of the document with the offset of their first character.
        token_offsets: the embedder's ``token_offsets`` (character spans of tokens).
        config: sizes in tokens.
        markdown: recognise ``#`` headings (outside code fences) as section boundaries.
    """
    trail: list[tuple[int, str]] = []
    in_fence = False
    for base, block in blocks:
        for start, end, heading_line in _sections(block, markdown, in_fence_box := [in_fence]):
            if heading_line is not None:
                level, title = heading_line
                trail = [(lvl, name) for lvl, name in trail if lvl < level] + [(level, title)]
                continue
            heading = " > ".join(name for _, name in trail)
            yield from _chunk_section(block, start, end, base, heading, token_offsets, config)
        in_fence = in_fence_box[0]


def _sections(block: str, markdown: bool, fence: list[bool]) -> Iterator[tuple[int, int, tuple[int, str] | None]]:
    """Yield ``(start, end, None)`` for body text and ``(.., (level, title))`` for heading lines."""
    if not markdown:
        yield 0, len(block), None
        return
    body_start = 0
    pos = 0
    for line in block.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if _FENCE.match(stripped):
            fence[0] = not fence[0]
        elif not fence[0] and (match := _HEADING.match(stripped)):
            if pos > body_start:
                yield body_start, pos, None
            yield pos, pos + len(line), (len(match.group(1)), match.group(2).strip())
            body_start = pos + len(line)
        pos += len(line)
    if pos > body_start:
        yield body_start, pos, None


def _chunk_section(block: str, start: int, end: int, base: int, heading: str,
                   token_offsets: TokenOffsets, config: ChunkingConfig) -> Iterator[Chunk]:
    section = block[start:end]
    units = split_units(section)
    if not units:
        return
    offsets = token_offsets(section)
    if not offsets:
        return
    tok = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts = tok[:, 0]
    unit_arr = np.asarray(units, dtype=np.int64)
    first_tok = np.searchsorted(starts, unit_arr[:, 0], side="left")
    last_tok = np.searchsorted(starts, unit_arr[:, 1], side="left")
    counts = (last_tok - first_tok).tolist()
    limit, overlap = config.chunk_tokens, config.overlap_tokens

    def make(a: int, b: int, n: int) -> Chunk:
        return Chunk(section[a:b], base + start + a, base + start + b, heading, n)

    current: list[int] = []
    current_tokens = 0
    for index, n in enumerate(counts):
        if n == 0:
            continue
        if n > limit:
            if current:
                yield make(units[current[0]][0], units[current[-1]][1], current_tokens)
                current, current_tokens = [], 0
            lo, hi = int(first_tok[index]), int(last_tok[index])
            step = limit - overlap
            at = lo
            while True:
                stop = min(at + limit, hi)
                yield make(int(tok[at, 0]), int(tok[stop - 1, 1]), stop - at)
                if stop >= hi:
                    break
                at += step
            continue
        if current and current_tokens + n > limit:
            yield make(units[current[0]][0], units[current[-1]][1], current_tokens)
            kept: list[int] = []
            kept_tokens = 0
            for previous in reversed(current[1:]):
                if kept_tokens + counts[previous] > overlap or kept_tokens + counts[previous] + n > limit:
                    break
                kept.insert(0, previous)
                kept_tokens += counts[previous]
            current, current_tokens = kept, kept_tokens
        current.append(index)
        current_tokens += n
    if current:
        yield make(units[current[0]][0], units[current[-1]][1], current_tokens)
