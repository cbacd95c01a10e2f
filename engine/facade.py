"""``Engine``: one question, answered from baked-in knowledge or from retrieval.

Both modes share one loaded base model. "baked" attaches the fine-tuned LoRA
adapter and asks the question alone; "rag" runs the retrieval step (embed ->
HNSW + FTS5 -> Numba scoring), quotes the passages in the prompt and asks the
base model. Every answer carries per-stage timings, and RAG answers carry
citations (source file, chunk id, character span).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine import models
from engine.errors import AdapterError, InputError
from engine.finetune.prompt import BAKED_SYSTEM_PROMPT
from engine.generator import Generation, Generator
from engine.scoring import select_sentences
from engine.prompting import RAG_SYSTEM_PROMPT, Passage, RagPrompt, build_rag_prompt, cited_labels

if TYPE_CHECKING:
    from engine.kb import Hit

Mode = Literal["rag", "baked"]
_ADAPTER_NAME = "baked"
_MODES = ("rag", "baked")


@dataclass(frozen=True)
class Citation:
    """A passage a RAG answer was given, and whether the answer cites it by label."""

    label: int
    source: str
    chunk_id: int
    span: tuple[int, int]  # character offsets in ``source``
    heading: str
    cited: bool  # the answer mentions ``[label]``


@dataclass(frozen=True)
class AnswerTimings:
    """Wall time of every stage of one answer, in milliseconds (tokens where named).

    Retrieval stages are zero in "baked" mode. ``ttft_ms`` runs from the call to the
    first generated token (retrieval and prompt building included); ``total_ms`` to
    the last token. The stages add up: ``retrieval_ms + prompt_build_ms +
    generation_ms <= total_ms``.
    """

    embed_ms: float
    dense_search_ms: float
    lexical_search_ms: float
    scoring_ms: float
    retrieval_ms: float
    prompt_build_ms: float
    prompt_tokens: int
    reused_tokens: int
    prefill_ms: float
    prefill_tokens: int
    ttft_ms: float
    decode_ms: float
    decode_tokens: int
    generation_ms: float
    total_ms: float


@dataclass(frozen=True)
class Answer:
    """An answer, how it was produced, what it rests on, and how long each stage took."""

    question: str
    text: str
    mode: str
    citations: tuple[Citation, ...]
    timings: AnswerTimings
    stop_reason: str


@dataclass(frozen=True)
class _Prepared:
    messages: tuple[tuple[str, str], ...]
    adapters: dict[str, float]
    rag: RagPrompt | None
    search_timings: object | None
    retrieval_ms: float
    prompt_build_ms: float


class Engine:
    """The assistant: a base GGUF model, optionally a LoRA adapter and a knowledge base.

    Args:
        model: GGUF path; the default generator from the model cache when None.
        adapter: GGUF LoRA adapter of the fine-tuned ("baked") path, or None.
        kb: knowledge base folder (or an open ``KnowledgeBase``) for "rag", or None.
        embedder: the ``Embedder`` to open ``kb`` with; the default one when None.
        n_ctx: context window of the generator, in tokens.
        n_threads: generation threads (None: the Generator's default).
        k: passages retrieved per question.
        context: what of the retrieved chunks goes into a RAG prompt: "chunks" (whole
            chunks, best first; measured the more accurate with SmolLM2-135M) or
            "sentences" (the most relevant, least redundant sentences within
            ``context_tokens``, chosen by the Numba budget kernel: shorter prompts).
        context_tokens: embedder tokens of source text kept with ``context="sentences"``.
        mmr_lambda: relevance against diversity of the retrieved passages, in ``[0, 1]``;
            0.9 measured best on the bundled set (recall@3 of the answer 84% against
            75% at the knowledge base's general default of 0.7).
        prompt_budget_tokens: most tokens a RAG prompt may take; default
            ``n_ctx - max_tokens`` of each request.

    Raises:
        ModelError, AdapterError, KnowledgeBaseError: a part cannot be loaded.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        adapter: str | os.PathLike[str] | None = None,
        kb=None,
        embedder=None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        k: int = 3,
        context: Literal["sentences", "chunks"] = "chunks",
        context_tokens: int = 96,
        mmr_lambda: float = 0.9,
        prompt_budget_tokens: int | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        if context not in ("sentences", "chunks"):
            raise InputError(f"context must be 'sentences' or 'chunks', got {context!r}")
        if isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens < 8:
            raise InputError(f"context_tokens must be an integer >= 8, got {context_tokens!r}")
        model_path = Path(model) if model is not None else models.model_path(models.DEFAULT_GENERATOR)
        self.generator = Generator(model_path, n_ctx=n_ctx, n_threads=n_threads)
        self.adapter_path = Path(adapter) if adapter is not None else None
        if self.adapter_path is not None:
            self.generator.load_adapter(self.adapter_path, name=_ADAPTER_NAME)
        self.kb = _open_kb(kb, embedder) if kb is not None else None
        self.k = k
        self.context = context
        self.context_tokens = context_tokens
        if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, (int, float)) or not 0 <= mmr_lambda <= 1:
            raise InputError(f"mmr_lambda must be a number in [0, 1], got {mmr_lambda!r}")
        self.mmr_lambda = float(mmr_lambda)
        self.prompt_budget_tokens = prompt_budget_tokens
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the knowledge base (the model is freed with the object)."""
        if self.kb is not None and hasattr(self.kb, "close"):
            self.kb.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this engine can answer in, given what it was built with."""
        return tuple(m for m in _MODES if (m == "rag" and self.kb is not None)
                     or (m == "baked" and self.adapter_path is not None))

    def ask(self, question: str, mode: Mode = "rag", *, max_tokens: int = 48,
            passages: Sequence[Hit] | None = None) -> Answer:
        """Answer ``question`` in ``mode`` ("rag" or "baked"), greedily.

        Args:
            question: the user's question.
            mode: "rag" (retrieve, quote, answer with the base model) or "baked" (the adapter).
            max_tokens: most tokens of the answer.
            passages: "rag" only: answer from these hits (best first; e.g. your own
                ``KnowledgeBase.search`` results) instead of retrieving; the retrieval
                timings are then zero.

        Raises:
            InputError: empty question, unknown mode, or a mode this engine lacks a part for.
            ContextOverflowError: the question alone does not fit the context window.
        """
        start = time.perf_counter()
        with self._lock:
            prepared = self._prepare(question, mode, max_tokens, passages)
            generation = self.generator.generate(list(prepared.messages), max_tokens=max_tokens,
                                                 adapters=prepared.adapters, stop=["<|im_end|>"])
        return _answer(question, mode, prepared, generation, start)

    def stream(self, question: str, mode: Mode = "rag", *, max_tokens: int = 48,
               passages: Sequence[Hit] | None = None) -> AnswerStream:
        """Like :meth:`ask`, but yields the answer's text pieces as they are generated.

        The stream's ``answer`` holds the full :class:`Answer` once it is exhausted.
        """
        start = time.perf_counter()
        self._lock.acquire()
        try:
            prepared = self._prepare(question, mode, max_tokens, passages)
            pieces = self.generator.stream(list(prepared.messages), max_tokens=max_tokens,
                                           adapters=prepared.adapters, stop=["<|im_end|>"])
        except BaseException:
            self._lock.release()
            raise
        return AnswerStream(question, mode, prepared, pieces, start, self._lock)

    def _prepare(self, question: str, mode: str, max_tokens: int,
                 passages: Sequence[Hit] | None = None) -> _Prepared:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty: ask something")
        if mode not in _MODES:
            raise InputError(f"mode must be 'rag' or 'baked', got {mode!r}")
        if passages is not None and mode != "rag":
            raise InputError("passages= is for mode='rag': the baked mode answers without sources")
        if mode == "baked":
            if self.adapter_path is None:
                raise AdapterError("mode='baked' needs a fine-tuned adapter: Engine(adapter=...) "
                                   "(make one with `bakeoff finetune`)")
            t0 = time.perf_counter()
            messages = (("system", BAKED_SYSTEM_PROMPT), ("user", question))
            return _Prepared(messages, {_ADAPTER_NAME: 1.0}, None, None, 0.0, _ms(t0))
        if passages is not None:
            hits, query_embedding, search_timings, retrieval_ms = _given_hits(passages), None, None, 0.0
        elif self.kb is None:
            raise InputError("mode='rag' needs a knowledge base: Engine(kb=...) (build one with `bakeoff index`)")
        else:
            t0 = time.perf_counter()
            result = self.kb.search(question, k=self.k, lam=self.mmr_lambda)
            hits, query_embedding, search_timings, retrieval_ms = result.hits, result.query_embedding, result.timings, _ms(t0)
        t1 = time.perf_counter()
        candidates = self._passages(question, hits, query_embedding)
        budget = self.prompt_budget_tokens or self.generator.n_ctx
        budget = min(budget, self.generator.n_ctx - max_tokens)
        rag = build_rag_prompt(question, candidates, count_tokens=self._count_chat_tokens, budget_tokens=budget,
                               system_prompt=RAG_SYSTEM_PROMPT, count_text=self._count_text_tokens)
        return _Prepared(rag.messages, {}, rag, search_timings, retrieval_ms, _ms(t1))

    def _passages(self, question: str, hits: Sequence[Hit], query_embedding) -> list[Passage]:
        if self.context == "chunks":
            return [Passage(i + 1, h.chunk_id, h.source, h.span, h.heading, h.text) for i, h in enumerate(hits)]
        if self.kb is None:
            raise InputError("context='sentences' ranks sentences with the knowledge base's embedder: "
                             "give Engine(kb=...) or use context='chunks'")
        embedder = self.kb.embedder
        if query_embedding is None:
            query_embedding = embedder.embed_query(question)
        selected = select_sentences([(h.text, h.span[0]) for h in hits], query_embedding,
                                    self.context_tokens, embedder.embed, embedder.count_tokens)
        passages = []
        for index, hit in enumerate(hits):
            mine = [s for s in selected if s.chunk_index == index]
            if mine:
                span = (mine[0].start_char, mine[-1].end_char)
                text = " ".join(s.text for s in mine)
                passages.append(Passage(len(passages) + 1, hit.chunk_id, hit.source, span, hit.heading, text))
        return passages

    def _count_text_tokens(self, text: str) -> int:
        return len(self.generator.tokenize(text, add_special=False))

    def _count_chat_tokens(self, messages) -> int:
        return len(self.generator.tokenize(self.generator.format_chat(list(messages)), parse_special=True))


class AnswerStream:
    """Iterator over the text pieces of one streamed answer (see :meth:`Engine.stream`)."""

    def __init__(self, question, mode, prepared, pieces, start, lock) -> None:
        self._question, self._mode, self._prepared = question, mode, prepared
        self._pieces, self._start, self._lock = pieces, start, lock
        self.answer: Answer | None = None
        self._released = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.answer = _answer(self._question, self._mode, self._prepared, self._pieces.generation, self._start)
            self._release()
            raise
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop generating and release the engine."""
        self._pieces.close()
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._lock.release()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_kb(kb, embedder):
    from engine.kb import KnowledgeBase

    if isinstance(kb, KnowledgeBase):
        return kb
    if embedder is None:
        from engine.embedder import Embedder

        embedder = Embedder(models.DEFAULT_EMBEDDER)
    return KnowledgeBase.open(kb, embedder=embedder)


def _given_hits(passages: Sequence[Hit]) -> tuple[Hit, ...]:
    from engine.kb import Hit

    hits = tuple(passages) if not isinstance(passages, (str, bytes)) else ()
    if not hits or not all(isinstance(h, Hit) for h in hits):
        raise InputError("passages= takes a non-empty sequence of engine.Hit (e.g. KnowledgeBase.search(...).hits)")
    return hits


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


def _answer(question: str, mode: str, prepared: _Prepared, generation: Generation, start: float) -> Answer:
    g = generation.timings
    s = prepared.search_timings
    text = generation.text.strip()
    citations: tuple[Citation, ...] = ()
    if prepared.rag is not None:
        mentioned = set(cited_labels(text))
        citations = tuple(Citation(p.label, p.source, p.chunk_id, p.span, p.heading, p.label in mentioned)
                          for p in prepared.rag.passages)
    before_generation = prepared.retrieval_ms + prepared.prompt_build_ms
    timings = AnswerTimings(
        embed_ms=s.embed_ms if s else 0.0,
        dense_search_ms=s.dense_search_ms if s else 0.0,
        lexical_search_ms=s.lexical_search_ms if s else 0.0,
        scoring_ms=s.scoring_ms if s else 0.0,
        retrieval_ms=prepared.retrieval_ms,
        prompt_build_ms=prepared.prompt_build_ms,
        prompt_tokens=g.prompt_tokens,
        reused_tokens=g.reused_tokens,
        prefill_ms=g.prefill_ms,
        prefill_tokens=g.prefill_tokens,
        ttft_ms=before_generation + g.ttft_ms,
        decode_ms=g.decode_ms,
        decode_tokens=g.decode_tokens,
        generation_ms=g.total_ms,
        total_ms=_ms(start),
    )
    return Answer(question, text, mode, citations, timings, generation.stop_reason)
