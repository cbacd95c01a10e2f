"""The answer layer: hits -> passages -> one tokenized prompt -> (generation) -> answer and citations.

It sits between the knowledge base and the generator and calls neither: the facade
hands it hits (with the search's timings) and gets token ids back, runs the
generator on them, and hands the generation back for the answer. Everything it
needs from the model (chat template, tokenizer) and the embedder comes in as
values, so nothing here reaches up or sideways.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.answer.passages import Context, SentenceEmbedder, chunk_passages, sentence_passages
from engine.answer.prompt import Tokenize, build_rag_prompt, cited_labels
from engine.answer.spliced_prompt import ChunkBlock, SplicedLayout, TokenizePart
from engine.answer.types import Answer, AnswerTimings, Citation, Mode, Passage
from engine.errors import InputError
from engine.generation.chat import ChatFormat
from engine.generation.types import Generation

if TYPE_CHECKING:
    from engine.kb import Hit, SearchTimings


@dataclass(frozen=True)
class PreparedAnswer:
    """What the generator is asked to do for one question, and what it took to get there."""

    question: str
    mode: Mode
    tokens: tuple[int, ...]  # the whole prompt, tokenized once
    adapters: Mapping[str, float] = field(default_factory=dict)
    passages: tuple[Passage, ...] = ()
    search: SearchTimings | None = None
    retrieval_ms: float = 0.0
    prompt_build_ms: float = 0.0
    # Spliced layout only: the shared prefix and the blocks whose chunk states stand in for their tokens.
    prefix: tuple[int, ...] = ()
    blocks: tuple[ChunkBlock, ...] = ()
    kv_ms: float = 0.0
    kv_computed: int = 0


class AnswerLayer:
    """Builds the prompts of both modes and turns generations into answers.

    Args:
        chat: the generator's chat format.
        tokenize: the generator's prompt tokenizer (BOS as the model wants, special tokens parsed).
        count_text: tokens of a bare string in the generator's vocabulary.
        context: "chunks" or "sentences" (see :mod:`engine.answer.passages`).
        context_tokens: embedder tokens of source text kept with ``context="sentences"``.
        mmr_lambda: relevance against diversity, used by sentence selection as by retrieval.
        embedder: the knowledge base's embedder; needed by ``context="sentences"`` only.
        tokenize_part: tokenizer of one part of a spliced-layout prompt (see
            :mod:`engine.answer.spliced_prompt`); needed by :meth:`rag_spliced` only.
    """

    def __init__(self, *, chat: ChatFormat, tokenize: Tokenize, count_text: Callable[[str], int],
                 context: Context = "chunks", context_tokens: int = 96, mmr_lambda: float = 0.9,
                 embedder: SentenceEmbedder | None = None, tokenize_part: TokenizePart | None = None) -> None:
        if context == "sentences" and embedder is None:
            raise InputError("context='sentences' ranks sentences with the knowledge base's embedder: "
                             "give Engine(kb=...) or use context='chunks'")
        self.chat = chat
        self._tokenize = tokenize
        self._count_text = count_text
        self.context = context
        self.context_tokens = context_tokens
        self.mmr_lambda = mmr_lambda
        self._embedder = embedder
        self._tokenize_part = tokenize_part
        self._spliced: SplicedLayout | None = None

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings of every answer: the model's end of turn."""
        return (self.chat.end_of_turn,)

    def baked(self, question: str, *, system_prompt: str, adapters: Mapping[str, float]) -> PreparedAnswer:
        """The question alone, with the system prompt the adapter was trained on."""
        started = time.perf_counter()
        tokens = tuple(self._tokenize(self.chat.prompt(system_prompt, question)))
        return PreparedAnswer(question, "baked", tokens, dict(adapters), prompt_build_ms=_ms(started))

    def rag(self, question: str, hits: Sequence[Hit], *, budget_tokens: int,
            query_embedding: np.ndarray | None = None, search: SearchTimings | None = None,
            retrieval_ms: float = 0.0, mode: Mode = "rag",
            adapters: Mapping[str, float] | None = None) -> PreparedAnswer:
        """The question with as many of ``hits`` (best first) as fit ``budget_tokens``.

        ``mode`` "hybrid" asks the same prompt with ``adapters`` (the fine-tuned reader) attached.
        """
        started = time.perf_counter()
        if self.context == "sentences":
            assert self._embedder is not None  # checked in __init__
            candidates = sentence_passages(question, hits, self._embedder, budget_tokens=self.context_tokens,
                                           mmr_lambda=self.mmr_lambda, query_embedding=query_embedding)
        else:
            candidates = chunk_passages(hits)
        prompt = build_rag_prompt(question, candidates, chat=self.chat, tokenize=self._tokenize,
                                  count_text=self._count_text, budget_tokens=budget_tokens)
        return PreparedAnswer(question, mode, prompt.tokens, dict(adapters or {}), prompt.passages, search,
                              retrieval_ms, _ms(started))

    def rag_spliced(self, question: str, hits: Sequence[Hit], *, budget_tokens: int,
                    search: SearchTimings | None = None, retrieval_ms: float = 0.0, mode: Mode = "rag",
                    adapters: Mapping[str, float] | None = None) -> PreparedAnswer:
        """The question with whole chunks of ``hits`` in the spliced layout (labels are chunk ids).

        Raises:
            InputError: ``context="sentences"`` (a state is per whole chunk), or the chat
                template rewrites messages so the prompt cannot be split.
        """
        started = time.perf_counter()
        prompt = self._layout().build(question, chunk_passages(hits), budget_tokens=budget_tokens)
        return PreparedAnswer(question, mode, prompt.tokens, dict(adapters or {}), prompt.passages, search,
                              retrieval_ms, _ms(started), prompt.prefix, prompt.blocks)

    def chunk_blocks(self, hits: Sequence[Hit]) -> tuple[tuple[int, ...], tuple[ChunkBlock, ...]]:
        """The shared prefix, and each hit's block as if it were the first passage (to precompute its state)."""
        layout = self._layout()
        blocks = []
        for passage in chunk_passages(hits):
            text = layout.block_text(passage)
            blocks.append(ChunkBlock(passage.chunk_id, len(layout.prefix), text, layout.tokenize_block(text)))
        return layout.prefix, tuple(blocks)

    def _layout(self) -> SplicedLayout:
        if self.context != "chunks":
            raise InputError("splicing precomputed chunk states needs context='chunks': a state holds a whole chunk")
        if self._tokenize_part is None:
            raise InputError("this answer layer has no part tokenizer (tokenize_part=): it cannot splice")
        if self._spliced is None:
            self._spliced = SplicedLayout(self.chat, self._tokenize_part)
        return self._spliced

    def answer(self, prepared: PreparedAnswer, generation: Generation, started: float) -> Answer:
        """The answer to ``prepared`` once generated; ``started`` is the ``perf_counter`` of the call."""
        text = generation.text.strip()
        mentioned = set(cited_labels(text)) if prepared.passages else set()
        citations = tuple(Citation(p.label, p.source, p.chunk_id, p.span, p.heading, p.text, p.label in mentioned)
                          for p in prepared.passages)
        before_generation = prepared.retrieval_ms + prepared.prompt_build_ms + prepared.kv_ms
        timings = AnswerTimings(search=prepared.search, generation=generation.timings,
                                retrieval_ms=prepared.retrieval_ms, prompt_build_ms=prepared.prompt_build_ms,
                                ttft_ms=before_generation + generation.timings.ttft_ms, total_ms=_ms(started),
                                kv_ms=prepared.kv_ms, kv_computed=prepared.kv_computed)
        return Answer(prepared.question, text, prepared.mode, citations, timings,
                      generation.stop_reason)  # type: ignore[arg-type]  # the session returns one of StopReason


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
