"""The chunk states a spliced prompt needs: looked up in the chunk-KV cache, or computed and kept.

The facade asks for them between building the prompt and generating; this module
knows what a state depends on (:class:`engine.generation.kv_cache.StateKey`) and turns each
block of a spliced-layout prompt (:mod:`engine.answer.spliced_prompt`) into a
:class:`engine.generation.splice.Splice`.

A state is computed the same way whenever it is computed, so that the one
``bakeoff index --kv-cache`` wrote and the one an answer computed after other
requests are the same bytes: from an empty cache, the prefix alone in one batch, then
the chunk in one batch after it. llama.cpp's CPU flash attention takes another path
for a batch under 64 tokens than for a longer one, so K/V depend on the batch the
tokens came in, and a prefix left in the cache by another request (evaluated with a
short question, or its last token alone after a full match) gives the chunk after it
K/V that differ in most bytes, by 2% of a value (median): enough to change a greedy
answer's wording at a near-tie. Starting afresh costs evaluating the
prefix (62 tokens with the default system prompt) once per call that computes states.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine._native import core
from engine.answer.spliced_prompt import ChunkBlock
from engine.generation.generator import Generator
from engine.generation.kv_cache import ChunkKvCache
from engine.generation.kv_file import CachedState, StateKey, file_sha256, tokens_sha256
from engine.generation.splice import Splice
from engine.hardware import use_extra_buffer_types


@dataclass(frozen=True)
class FetchedStates:
    """The splices of one prompt and what getting them cost."""

    splices: tuple[Splice, ...]
    ms: float  # cache lookups plus computing the missing states
    computed: int  # states that were not cached (computed during this call)


class ChunkStates:
    """Finds or computes the states of a generator's prompts, keyed by what shapes their K/V.

    Args:
        generator: made with ``splice_slots`` >= the passages a prompt holds.
        cache: where states are kept.
        adapter_files: the file of each loaded adapter name, for the key.
    """

    def __init__(self, generator: Generator, cache: ChunkKvCache, adapter_files: Mapping[str, str] | None = None):
        self.generator = generator
        self.cache = cache
        config = generator.config
        self._model_sha = file_sha256(generator.info.path)
        self._adapter_sha = {name: file_sha256(path) for name, path in (adapter_files or {}).items()}
        flash = {None: "auto", True: "on", False: "off"}[config.flash_attn]
        self._fixed = (config.kv_type, flash, _build_id(generator))
        self._computing = threading.Lock()  # one fetch at a time starts the generator afresh and computes

    def key(self, prefix: tuple[int, ...], adapters: Mapping[str, float]) -> StateKey:
        """The key of states computed after ``prefix`` with ``adapters``."""
        attached = tuple((self._adapter_sha[name], float(scale)) for name, scale in adapters.items() if scale != 0)
        kv_type, flash, build = self._fixed
        return StateKey(self._model_sha, attached, kv_type, flash, build, tokens_sha256(prefix))

    def fetch(self, prefix: tuple[int, ...], blocks: Sequence[ChunkBlock],
              adapters: Mapping[str, float]) -> FetchedStates:
        """A splice for every block (placed after ``prefix``), computing and caching the states not cached yet."""
        started = time.perf_counter()
        key = self.key(prefix, adapters)
        position = len(prefix)
        states: dict[int, CachedState] = {}
        for i, block in enumerate(blocks):
            if (found := self.cache.get(key, block.text, block.tokens, position)) is not None:
                states[i] = found
        computed = 0
        if len(states) < len(blocks):
            waited = not self._computing.acquire(blocking=False)
            if waited:
                self._computing.acquire()
            try:
                if waited:  # another fetch computed states meanwhile: perhaps some of these
                    for i, block in enumerate(blocks):
                        if i not in states and (found := self.cache.get(key, block.text, block.tokens, position)):
                            states[i] = found
                started_afresh = False
                for i, block in enumerate(blocks):
                    if i in states:
                        continue
                    if not started_afresh or len(prefix) == 1:  # a lone BOS cannot be evaluated alone
                        self._start_afresh(prefix, adapters)
                        started_afresh = True
                    state = self.generator.chunk_state(prefix, block.tokens, adapters=dict(adapters))
                    states[i] = self.cache.put(key, block.text, block.tokens, position, state)
                    computed += 1
            finally:
                self._computing.release()
        splices = tuple(Splice(block.start, states[i].state, states[i].n_tokens, states[i].position)
                        for i, block in enumerate(blocks))
        return FetchedStates(splices, (time.perf_counter() - started) * 1000.0, computed)

    def discard(self, prefix: tuple[int, ...], blocks: Sequence[ChunkBlock], adapters: Mapping[str, float]) -> None:
        """Forget the states of ``blocks`` (the next fetch computes them again)."""
        self.cache.discard(self.key(prefix, adapters), [block.text for block in blocks])

    def _start_afresh(self, prefix: tuple[int, ...], adapters: Mapping[str, float]) -> None:
        """Leave the generator's cache holding ``prefix`` alone, evaluated in one batch from empty (see the
        module's docstring), so every chunk state computed next follows the same prefix K/V."""
        self.generator.reset()
        if len(prefix) > 1:
            self.generator.chunk_state(prefix[:1], prefix[1:], adapters=dict(adapters))


def _build_id(generator: Generator) -> str:
    """The llama.cpp build and CPU path that computed a state (a different build may lay K/V out differently)."""
    extra_buffers = use_extra_buffer_types(generator.config.extra_buffers)
    parts = (core.LLAMA_CPP_PYTHON_VERSION, core.system_info(), f"extra buffers {extra_buffers}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
