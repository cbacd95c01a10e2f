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
from engine.errors import InputError

if TYPE_CHECKING:
    from engine.kb import Hit

#: What of the retrieved chunks goes into a prompt.
Context = Literal["chunks", "sentences"]
CONTEXTS: tuple[Context, ...] = ("chunks", "sentences")


class SentenceEmbedder(Protocol):
    """What sentence selection needs of an embedding space (``KnowledgeBase`` and ``Embedder`` have it)."""

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
    from engine.kb.scoring import select_sentences

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


def check_hits(passages: Sequence[Hit]) -> tuple[Hit, ...]:
    """The hits a caller passed (``Engine.ask(passages=...)``), checked: engine.Hit values whose text,
    source and heading are str, text not empty, an int chunk id and a span of two ints.

    Raises:
        InputError: naming the first passage and field that is not so.
    """
    from engine.kb import Hit

    hits = tuple(passages) if not isinstance(passages, (str, bytes)) else ()
    if not hits or not all(isinstance(h, Hit) for h in hits):
        raise InputError("passages= takes a non-empty sequence of engine.Hit (e.g. KnowledgeBase.search(...).hits)")
    for i, hit in enumerate(hits):
        for name in ("text", "source", "heading"):
            value = getattr(hit, name)
            if not isinstance(value, str):
                raise InputError(f"passages[{i}].{name} must be a str, got {type(value).__name__}: pass hits as "
                                 "KnowledgeBase.search returns them (or engine.Hit with str fields)")
        if not hit.text.strip():
            raise InputError(f"passages[{i}].text is empty: pass passages that hold text")
        span, chunk_id = hit.span, hit.chunk_id
        if (isinstance(chunk_id, bool) or not isinstance(chunk_id, int) or not isinstance(span, tuple)
                or len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            raise InputError(f"passages[{i}] needs an int chunk_id and a (start, end) span of ints, got "
                             f"chunk_id={chunk_id!r}, span={span!r}")
    return hits
