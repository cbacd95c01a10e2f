"""``Engine``: one question, answered from baked-in knowledge or from retrieval.

All modes share one loaded base model. "baked" attaches the fine-tuned LoRA
adapter and asks the question alone, with the system prompt the adapter was
trained on; "rag" runs the retrieval step (embed -> HNSW + FTS5 -> Numba
scoring), quotes the passages in the prompt and asks the base model; "hybrid"
asks the same prompt as "rag" with the adapter attached (the fine-tuned model
reading what was retrieved).

A question goes one way down: ``Engine`` validates it and retrieves, the answer
layer (:mod:`engine.answer`) turns hits into one tokenized prompt, the
:class:`Generator` runs it, and the answer layer makes the answer (citations,
composed timings) of the generation.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine import models
from engine.answer import CONTEXTS, MODES, Answer, AnswerLayer, Context, Mode, PreparedAnswer
from engine.answer.passages import check_hits
from engine.answer.types import SPLICE_MODES, SpliceMode
from engine.errors import AdapterError, InputError
from engine.generation.chat import SYSTEM_PROMPT_KEY, baked_system_prompt
from engine.generation.generator import Generator
from engine.generation.kv_cache import ChunkKvCache, KvCacheStats
from engine.generation.splice import Splice
from engine.generation.stream import TextStream
from engine.generation.tokenizer import Tokenizer
from engine.generation.types import Generation, GenerationTimings
from engine.shutdown import CallGate

if TYPE_CHECKING:
    from engine.embedding.embedder import Embedder
    from engine.kb import Hit, KnowledgeBase, SearchResult

_ADAPTER_NAME = "baked"


class Engine:
    """The assistant: a base GGUF model, optionally a LoRA adapter and a knowledge base.

    Args:
        model: GGUF path; the default generator from the model cache when None.
        adapter: GGUF LoRA adapter of the fine-tuned ("baked") path, or None. Its
            ``bakeoff.system_prompt`` metadata (written by ``bakeoff finetune``) is the
            system prompt baked questions are asked with.
        kb: knowledge base folder (or an open ``KnowledgeBase``) for "rag", or None.
        embedder: the ``Embedder`` to open ``kb`` with; the one it was built with when None.
        n_ctx: context window of the generator, in tokens.
        n_threads: generation threads (None: the Generator's default).
        k: passages retrieved per question.
        context: what of the retrieved chunks goes into a RAG prompt: "chunks" (whole
            chunks, best first; measured the more accurate with SmolLM2-135M) or
            "sentences" (the most relevant, least redundant sentences within
            ``context_tokens``, chosen by the Numba budget kernel: shorter prompts).
        context_tokens: embedder tokens of source text kept with ``context="sentences"``.
        mmr_lambda: relevance against diversity of the retrieved passages (and of the
            sentences kept), in ``[0, 1]``; None takes the knowledge base's default
            (``engine.kb.ranking.MMR_LAMBDA``, 1.0: no diversification, measured best
            for question answering on the bundled set, see ``bench/bench_retrieval.py``).
        prompt_budget_tokens: most tokens a RAG prompt may take; default
            ``n_ctx - max_tokens`` of each request.
        kv_cache: precomputed chunk states for RAG (see :mod:`engine.generation.kv_cache`): a
            :class:`ChunkKvCache`, a folder for one, True for ``KB_DIR/kv`` (filled by
            ``bakeoff index --kv-cache``, or on first use), or None/False for none. With a
            cache, ``ask(splice="on")`` is the default: only the question is evaluated, the
            passages' K/V are spliced in; a spliced passage does not attend to the passages
            before it, which costs accuracy (``bakeoff compare`` measures how much).
        kv_type: the generator's K/V cache type ("f16"; "q8_0" halves chunk states, and
            turns flash attention on, which a quantized V cache needs).
        flash_attn: llama.cpp's flash attention: None lets it decide (on where the CPU backend has
            the kernel; on for a quantized ``kv_type``), True or False forces it.
            ``engine.generation.threads.fastest_attention`` measures which is faster here.

    Raises:
        ModelError, AdapterError, KnowledgeBaseError: a part cannot be loaded.
        InputError: a setting is out of range.

    Thread-safety: any number of threads may ask one Engine; generation runs one
    request at a time (the generator queues them), retrieval is locked by the
    knowledge base. No lock outlives the call (or stream) that took it.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        adapter: str | os.PathLike[str] | None = None,
        kb: str | os.PathLike[str] | KnowledgeBase | None = None,
        embedder: Embedder | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        k: int = 3,
        context: Context = "chunks",
        context_tokens: int = 96,
        mmr_lambda: float | None = None,
        prompt_budget_tokens: int | None = None,
        kv_cache: ChunkKvCache | str | os.PathLike[str] | bool | None = None,
        kv_type: str = "f16",
        flash_attn: bool | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        if context not in CONTEXTS:
            raise InputError(f"context must be 'sentences' or 'chunks', got {context!r}")
        if isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens < 8:
            raise InputError(f"context_tokens must be an integer >= 8, got {context_tokens!r}")
        if mmr_lambda is None:
            from engine.kb.ranking import MMR_LAMBDA

            mmr_lambda = MMR_LAMBDA
        if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, (int, float)) or not 0 <= mmr_lambda <= 1:
            raise InputError(f"mmr_lambda must be a number in [0, 1], got {mmr_lambda!r}")
        if prompt_budget_tokens is not None and (isinstance(prompt_budget_tokens, bool)
                                                 or not isinstance(prompt_budget_tokens, int)
                                                 or prompt_budget_tokens < 1):
            raise InputError(f"prompt_budget_tokens must be None or an integer >= 1, got {prompt_budget_tokens!r}")
        self._calls = CallGate("this Engine")
        model_path = Path(model) if model is not None else models.model_path(models.DEFAULT_GENERATOR)
        self.generator = Generator(model_path, n_ctx=n_ctx, n_threads=n_threads, kv_type=kv_type,
                                   flash_attn=(True if kv_type != "f16" else None) if flash_attn is None else flash_attn,
                                   splice_slots=k if kv_cache not in (None, False) else 0)
        self.adapter_path = Path(adapter) if adapter is not None else None
        self._baked_system_prompt = baked_system_prompt(None)
        if self.adapter_path is not None:
            self.generator.load_adapter(self.adapter_path, name=_ADAPTER_NAME)
            trained_with = self.generator.adapter_metadata(_ADAPTER_NAME).get(SYSTEM_PROMPT_KEY)
            self._baked_system_prompt = trained_with or self._baked_system_prompt
        self.kb: KnowledgeBase | None = _open_kb(kb, embedder) if kb is not None else None
        self.k = k
        self.mmr_lambda = float(mmr_lambda)
        self.prompt_budget_tokens = prompt_budget_tokens
        tokens = Tokenizer.of(self.generator)
        self._layer = AnswerLayer(
            chat=tokens.chat, tokenize=tokens.encode_prompt, count_text=tokens.count_text,
            context=context, context_tokens=context_tokens, mmr_lambda=self.mmr_lambda,
            embedder=self.kb if context == "sentences" else None,  # sentences ranked in the kb's own space
            tokenize_part=tokens.encode_part)
        self._calls.on_close(self, lambda engine: engine.generator.cancel())
        self.kv_cache = _kv_cache(kv_cache, self.kb)
        self._states = None
        if self.kv_cache is not None:
            from engine.answer.chunk_states import ChunkStates

            adapters = {_ADAPTER_NAME: str(self.adapter_path)} if self.adapter_path is not None else {}
            self._states = ChunkStates(self.generator, self.kv_cache, adapters)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop: refuse new questions, cancel those in flight, wait for them, release the knowledge base.

        Questions asked from other threads that are still running end with
        :class:`~engine.errors.CancelledError` (generating) or finish (retrieving) before this
        returns, within ``timeout_s``; later ones raise :class:`~engine.errors.EngineClosedError`.
        The model is freed with the object.
        """
        self._calls.close(timeout_s)
        self.generator.close(timeout_s)
        if self.kb is not None:
            self.kb.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes this engine can answer in, given what it was built with."""
        return tuple(m for m in MODES if (m == "rag" and self.kb is not None)
                     or (m == "hybrid" and self.kb is not None and self.adapter_path is not None)
                     or (m == "baked" and self.adapter_path is not None))

    @property
    def context(self) -> Context:
        """What of the retrieved chunks goes into a RAG prompt ("chunks" or "sentences")."""
        return self._layer.context

    def retrieve(self, question: str, *, kb: KnowledgeBase | None = None) -> SearchResult:
        """What a "rag" or "hybrid" answer to ``question`` is given: ``kb`` (default: the engine's
        knowledge base) searched with the engine's ``k`` and MMR weight. Pass the result's
        ``.hits`` as ``ask(..., passages=)`` to answer from another knowledge base (an edited
        copy, a newer version) exactly as the engine would from its own.

        Raises:
            InputError: no ``kb`` and the engine has none; the question is not searchable text.
        """
        searched = kb if kb is not None else self.kb
        if searched is None:
            raise InputError("retrieve() needs a knowledge base: Engine(kb=...) or retrieve(question, kb=...)")
        return searched.search(question, k=self.k, mmr_lambda=self.mmr_lambda)

    def precompute_chunk_states(self, progress: Callable[[int, int], None] | None = None) -> KvCacheStats:
        """Compute and keep the chunk state of every chunk of the knowledge base, for splicing.

        States already cached are kept; states of chunks the knowledge base no longer
        holds (changed or removed documents) are deleted. ``progress(done, total)`` is
        called after each group of chunks, computed together as an answer computes its
        missing ones (the same bytes). About 0.6 s per 200-token chunk on one core.

        Raises:
            InputError: the engine has no knowledge base or no ``kv_cache``.
        """
        if self.kb is None or self._states is None:
            raise InputError("precomputing chunk states needs Engine(kb=..., kv_cache=True) (or a cache folder)")
        prefix, blocks = self._layer.chunk_blocks(self.kb.chunks())
        group = max(1, self.generator.config.splice_slots)
        for start in range(0, len(blocks), group):
            self._states.fetch(prefix, blocks[start:start + group], {})
            if progress is not None:
                progress(min(start + group, len(blocks)), len(blocks))
        assert self.kv_cache is not None  # set together with _states
        self.kv_cache.prune(self._states.key(prefix, {}), [b.text for b in blocks])
        return self.kv_cache.stats()

    def ask(self, question: str, mode: Mode = "rag", *, max_tokens: int = 48,
            passages: Sequence[Hit] | None = None, splice: SpliceMode | None = None,
            temperature: float = 0.0, stop: Sequence[str] = ()) -> Answer:
        """Answer ``question`` in ``mode`` ("rag", "baked" or "hybrid"), greedily.

        Args:
            question: the user's question.
            mode: "rag" (retrieve, quote, answer with the base model), "baked" (the adapter), or
                "hybrid" (retrieve, quote, answer with the adapter: it needs both parts).
            max_tokens: most tokens of the answer.
            passages: "rag" and "hybrid": answer from these hits (best first; e.g. your own
                ``KnowledgeBase.search`` results) instead of retrieving; the answer's
                ``timings.search`` is then None.
            splice: "rag" and "hybrid": how the passages' K/V are made (see :data:`SpliceMode`):
                "off" (whole prompt evaluated), "on" (precomputed chunk states spliced in;
                needs ``kv_cache``), "prefill" (the spliced layout's tokens, all evaluated).
                None: "on" with a ``kv_cache``, else "off".
            temperature: 0 answers greedily (the default, reproducible); above 0 samples.
            stop: strings that end the answer (besides the model's end of turn); not part of the text.

        Raises:
            InputError: a question that is not a non-empty str, unknown mode, passages that are not
                well-formed hits, or a mode this engine lacks a part for
                ("rag"/"hybrid" without a knowledge base or ``passages``).
            AdapterError: mode "baked" or "hybrid" without an adapter.
            ContextOverflowError: the question alone does not fit the context window.
        """
        started = time.perf_counter()
        with self._calls.call():
            prepared, splices = self._prepare(question, mode, max_tokens, passages, splice)
            stops = (*self._layer.stop, *_stops(stop))

            def generate(chunk_states: tuple[Splice, ...]) -> Generation:
                return self.generator.generate(list(prepared.tokens), max_tokens=max_tokens, temperature=temperature,
                                               adapters=prepared.adapters, stop=stops, splices=chunk_states)

            try:
                generation = generate(splices)
            except InputError as refused:
                if not splices or not str(refused).startswith("chunk state"):
                    raise
                # The native core refused a state whose file passed every check of the cache (a forged
                # file with a valid header and checksum): forget those states and compute them, once.
                assert self._states is not None  # splices come from it
                self._states.discard(prepared.prefix, prepared.blocks, prepared.adapters)
                fetched = self._states.fetch(prepared.prefix, prepared.blocks, prepared.adapters)
                prepared = dataclasses.replace(prepared, kv_ms=prepared.kv_ms + fetched.ms,
                                               kv_computed=prepared.kv_computed + fetched.computed)
                generation = generate(fetched.splices)
            return self._layer.answer(prepared, generation, started)

    def stream(self, question: str, mode: Mode = "rag", *, max_tokens: int = 48,
               passages: Sequence[Hit] | None = None, splice: SpliceMode | None = None,
               temperature: float = 0.0, stop: Sequence[str] = ()) -> AnswerStream:
        """Like :meth:`ask`, but yields the answer's text pieces as they are generated.

        Retrieval and the prompt are done here (errors raise here); the stream's
        ``answer`` holds the full :class:`Answer` once it is exhausted. A stream that is
        closed, left (``with``/``break``) or dropped early cancels its generation at once
        and holds nothing: the next question runs straight away.
        """
        started = time.perf_counter()
        with self._calls.call():
            prepared, splices = self._prepare(question, mode, max_tokens, passages, splice)
            pieces = self.generator.stream(list(prepared.tokens), max_tokens=max_tokens, temperature=temperature,
                                           adapters=prepared.adapters, stop=(*self._layer.stop, *_stops(stop)),
                                           splices=splices)
        return AnswerStream(self._layer, prepared, pieces, started)

    def prefill_without_passages(self, question: str, mode: Mode = "rag") -> GenerationTimings:
        """The spliced layout's prompt for ``question`` with no passage (the shared prefix and the
        question), generated for one token with ``mode``'s adapter: its ``prefill_ms`` is what the
        question's own tokens cost. Asked right after a spliced answer to the same question (whose
        prefix is then cached, as it is for that answer), the rest of that answer's prefill is the
        question's attention over the spliced positions (``engine.bakeoff.latency`` splits it so).

        Raises:
            InputError: a question that is not a non-empty str, mode "baked" (it has no passages),
                or a layout that cannot be spliced (``context="sentences"``).
            AdapterError: mode "hybrid" without an adapter.
        """
        with self._calls.call():
            prepared, _ = self._prepare(question, mode, 1, splice="prefill", no_passages=True)
            return self.generator.generate(list(prepared.tokens), max_tokens=1, adapters=prepared.adapters).timings

    def _prepare(self, question: str, mode: str, max_tokens: int, passages: Sequence[Hit] | None = None,
                 splice: SpliceMode | None = None,
                 no_passages: bool = False) -> tuple[PreparedAnswer, tuple[Splice, ...]]:
        if not isinstance(question, str):
            raise InputError(f"the question must be a str, got {type(question).__name__}"
                             + (": decode bytes first (question.decode('utf-8'))" if isinstance(question, bytes)
                                else ""))
        if not question.strip():
            raise InputError("the question is empty: ask something")
        if mode not in MODES:
            raise InputError(f"mode must be 'rag', 'baked' or 'hybrid', got {mode!r}")
        if passages is not None and mode == "baked":
            raise InputError("passages= is for mode='rag' or 'hybrid': the baked mode answers without sources")
        if splice is None:
            splice = "on" if self._states is not None and mode != "baked" else "off"
        if splice not in SPLICE_MODES:
            raise InputError(f"splice must be one of {', '.join(SPLICE_MODES)} or None, got {splice!r}")
        if splice != "off" and mode == "baked":
            raise InputError(f"splice={splice!r} is for mode='rag' or 'hybrid': the baked mode has no passages "
                             "to splice")
        if splice == "on" and self._states is None:
            raise InputError("splice='on' needs precomputed chunk states: Engine(kv_cache=True) (or a folder)")
        if mode != "rag" and self.adapter_path is None:
            raise AdapterError(f"mode={mode!r} needs a fine-tuned adapter: Engine(adapter=...) "
                               "(make one with `bakeoff finetune`)")
        adapters = {_ADAPTER_NAME: 1.0} if mode != "rag" else {}
        if mode == "baked":
            return self._layer.baked(question, system_prompt=self._baked_system_prompt, adapters=adapters), ()
        budget = min(self.prompt_budget_tokens or self.generator.n_ctx, self.generator.n_ctx - max_tokens)
        if no_passages:
            hits: tuple[Hit, ...] = ()
            search, retrieval_ms, query_embedding = None, 0.0, None
        elif passages is not None:
            hits, search, retrieval_ms, query_embedding = check_hits(passages), None, 0.0, None
        elif self.kb is None:
            raise InputError(f"mode={mode!r} needs a knowledge base: Engine(kb=...) (build one with `bakeoff index`), "
                             "or pass passages=")
        else:
            searched = time.perf_counter()
            result = self.retrieve(question)
            retrieval_ms = (time.perf_counter() - searched) * 1000.0
            hits, search, query_embedding = result.hits, result.timings, result.query_embedding
        if splice == "off":
            return self._layer.rag(question, hits, budget_tokens=budget, query_embedding=query_embedding,
                                   search=search, retrieval_ms=retrieval_ms, mode=mode, adapters=adapters), ()
        prepared = self._layer.rag_spliced(question, hits, budget_tokens=budget, search=search,
                                           retrieval_ms=retrieval_ms, mode=mode, adapters=adapters)
        if splice == "prefill" or self._states is None:
            return prepared, ()
        if len(prepared.blocks) > self.generator.config.splice_slots:
            raise InputError(f"{len(prepared.blocks)} passages but the generator splices at most "
                             f"{self.generator.config.splice_slots}: pass fewer passages")
        fetched = self._states.fetch(prepared.prefix, prepared.blocks, prepared.adapters)
        return dataclasses.replace(prepared, kv_ms=fetched.ms, kv_computed=fetched.computed), fetched.splices


class AnswerStream:
    """Iterator over the text pieces of one streamed answer (see :meth:`Engine.stream`).

    It holds no lock of the engine: dropping or closing it cancels the generation.
    """

    def __init__(self, layer: AnswerLayer, prepared: PreparedAnswer, pieces: TextStream, started: float) -> None:
        self._layer, self._prepared, self._pieces, self._started = layer, prepared, pieces, started
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            if self.answer is None and self._pieces.generation is not None:
                self.answer = self._layer.answer(self._prepared, self._pieces.generation, self._started)
            raise

    def close(self) -> None:
        """Stop generating (if still running)."""
        self._pieces.close()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_kb(kb: str | os.PathLike[str] | KnowledgeBase, embedder: Embedder | None) -> KnowledgeBase:
    from engine.kb import KnowledgeBase

    return kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb, embedder=embedder)


def _kv_cache(kv_cache: ChunkKvCache | str | os.PathLike[str] | bool | None,
              kb: KnowledgeBase | None) -> ChunkKvCache | None:
    if kv_cache is None or kv_cache is False:
        return None
    if isinstance(kv_cache, ChunkKvCache):
        return kv_cache
    if kv_cache is True:
        if kb is None:
            raise InputError("kv_cache=True keeps chunk states next to the knowledge base: give kb= too, "
                             "or pass a folder")
        return ChunkKvCache(kb.path / "kv")
    if isinstance(kv_cache, (str, os.PathLike)):
        return ChunkKvCache(kv_cache)
    raise InputError(f"kv_cache must be a ChunkKvCache, a folder, True, False or None, got {type(kv_cache).__name__}")


def _stops(stop: Sequence[str]) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise InputError(f"stop must be a sequence of non-empty str, got {stop!r}")
    return stops
