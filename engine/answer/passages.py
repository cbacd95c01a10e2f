"""Retrieved hits become the passages a prompt quotes: whole chunks, or the best sentences.

"chunks" keeps each hit's text as it is (measured the more accurate with
SmolLM2-135M). "sentences" keeps the most relevant, least redundant sentences of
all hits within a token budget, chosen by the Numba budget kernel with the same
MMR weight retrieval used: shorter prompts, at some accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from engine.answer.types import Passage

if TYPE_CHECKING:
    from engine.kb import Hit

#: What of the retrieved chunks goes into a prompt.
Context = Literal["chunks", "sentences"]
CONTEXTS: tuple[Context, ...] = ("chunks", "sentences")


class SentenceEmbedder(Protocol):
    """What sentence selection needs of an embedder (``engine.Embedder`` has it)."""

    def embed(self, texts: list[str]) -> np.ndarray: ...
    def embed_query(self, text: str) -> np.ndarray: ...
    def count_tokens(self, text: str) -> int: ...


def chunk_passages(hits: Sequence[Hit]) -> list[Passage]:
    """One passage per hit, its whole text, labelled 1..n in hit order."""
    return [Passage(i + 1, h.chunk_id, h.source, h.span, h.heading, h.text) for i, h in enumerate(hits)]


def sentence_passages(question: str, hits: Sequence[Hit], embedder: SentenceEmbedder, *, budget_tokens: int,
                      mmr_lambda: float, query_embedding: np.ndarray | None = None) -> list[Passage]:
    """The hits' best sentences within ``budget_tokens`` (embedder tokens), one passage per
    hit that keeps any, in reading order; the span runs from its first to its last sentence.

    ``query_embedding`` is the search's own (computed again when None, e.g. for hits the
    caller gave).
    """
    from engine.scoring import select_sentences

    if query_embedding is None:
        query_embedding = embedder.embed_query(question)
    selected = select_sentences([(h.text, h.span[0]) for h in hits], query_embedding, budget_tokens,
                                embedder.embed, embedder.count_tokens, mmr_lambda=mmr_lambda)
    passages: list[Passage] = []
    for index, hit in enumerate(hits):
        mine = [s for s in selected if s.chunk_index == index]
        if mine:
            span = (mine[0].start_char, mine[-1].end_char)
            text = " ".join(s.text for s in mine)
            passages.append(Passage(len(passages) + 1, hit.chunk_id, hit.source, span, hit.heading, text))
    return passages
