"""The chunk states a spliced prompt needs: looked up in the chunk-KV cache, or computed and kept.

The facade asks for them between building the prompt and generating; this module
knows what a state depends on (:class:`engine.generation.kv_cache.StateKey`) and turns each
block of a spliced-layout prompt (:mod:`engine.answer.spliced_prompt`) into a
:class:`engine.generation.splice.Splice`.

A state is computed the same way whenever it is computed, so that the one
``bakeoff index --kv-cache`` wrote and the one an answer computed after other
requests are the same bytes. llama.cpp's CPU flash attention takes another path for a
batch under 64 tokens than for a longer one, and in the longer one a row's result
depends on which K/V cells share a tile of 64: so a prefix left in the cache by another
request (evaluated with a short question, or its last token alone after a full match)
would give the chunk after it K/V that differ in most bytes, by 2% of a value (median):
enough to change a greedy answer's wording at a near-tie. So the prefix is evaluated
once, alone, from an empty cache (:meth:`Generator.prefix_state`), and that state is
kept and restored for every later computation; the missing chunks of a fetch are then
evaluated together, one sequence each in one batch, each placed on a tile boundary so
that its bytes do not depend on the chunks beside it (:meth:`Generator.chunk_states`).
``bakeoff index --kv-cache`` computes its states the same way, in groups of its own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
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
    prefix_ms: float = 0.0  # evaluating the prefix (0 when its kept state was used)
    compute_ms: float = 0.0  # evaluating the missing chunks and reading their states
    store_ms: float = 0.0  # keeping the computed states in the cache's RAM (their files are written behind)
    batches: int = 0  # llama_decode calls that evaluated the missing chunks


_KEPT_PREFIXES = 4  # prefix states kept (one per key: model, adapters, prefix); a few MB each


class ChunkStates:
    """Finds or computes the states of a generator's prompts, keyed by what shapes their K/V.

    Args:
        generator: made with ``splice_slots`` >= the passages a prompt holds.
        cache: where states are kept.
        adapter_files: the file of each loaded adapter name, for the key.

    ``prefix_evaluations`` counts the prefixes evaluated (each key's once, while its state is kept).
    """

    def __init__(self, generator: Generator, cache: ChunkKvCache, adapter_files: Mapping[str, str] | None = None):
        self.generator = generator
        self.cache = cache
        config = generator.config
        self._model_sha = file_sha256(generator.info.path)
        self._adapter_sha = {name: file_sha256(path) for name, path in (adapter_files or {}).items()}
        flash = {None: "auto", True: "on", False: "off"}[config.flash_attn]
        self._fixed = (config.kv_type, flash, _build_id(generator))
        self._computing = threading.Lock()  # one fetch at a time computes (and keeps the prefix states)
        self._prefixes: OrderedDict[str, bytes] = OrderedDict()  # key digest -> the prefix's state
        self.prefix_evaluations = 0

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
        computed = batches = 0
        prefix_ms = compute_ms = store_ms = 0.0
        if len(states) < len(blocks):
            waited = not self._computing.acquire(blocking=False)
            if waited:
                self._computing.acquire()
            try:
                if waited:  # another fetch computed states meanwhile: perhaps some of these
                    for i, block in enumerate(blocks):
                        if i not in states and (found := self.cache.get(key, block.text, block.tokens, position)):
                            states[i] = found
                missing = [i for i in range(len(blocks)) if i not in states]
                if missing:
                    prefix_state, prefix_ms = self._prefix_state(key, prefix, adapters)
                    t1 = time.perf_counter()
                    made = self.generator.chunk_states(prefix, prefix_state, [blocks[i].tokens for i in missing],
                                                       adapters=dict(adapters))
                    t2 = time.perf_counter()
                    for i, state in zip(missing, made.states):
                        block = blocks[i]
                        # The file is written off the answer's critical path (the state is in RAM now).
                        states[i] = self.cache.put(key, block.text, block.tokens, position, state, wait=False)
                    compute_ms, store_ms = (t2 - t1) * 1000.0, (time.perf_counter() - t2) * 1000.0
                    computed, batches = len(missing), made.batches
            finally:
                self._computing.release()
        splices = tuple(Splice(block.start, states[i].state, states[i].n_tokens, states[i].position)
                        for i, block in enumerate(blocks))
        return FetchedStates(splices, (time.perf_counter() - started) * 1000.0, computed, prefix_ms, compute_ms,
                             store_ms, batches)

    def discard(self, prefix: tuple[int, ...], blocks: Sequence[ChunkBlock], adapters: Mapping[str, float]) -> None:
        """Forget the states of ``blocks`` (the next fetch computes them again)."""
        self.cache.discard(self.key(prefix, adapters), [block.text for block in blocks])

    def _prefix_state(self, key: StateKey, prefix: tuple[int, ...],
                      adapters: Mapping[str, float]) -> tuple[bytes, float]:
        """The state of ``prefix`` evaluated alone from an empty cache (see the module's docstring), and the ms
        evaluating it took (0 when kept): kept after the first time, so that every chunk computed after it sees
        the same prefix K/V without evaluating it."""
        found = self._prefixes.get(key.digest)
        ms = 0.0
        if found is None:
            started = time.perf_counter()
            found = self.generator.prefix_state(prefix, adapters=dict(adapters))
            ms = (time.perf_counter() - started) * 1000.0
            self.prefix_evaluations += 1
            self._prefixes[key.digest] = found
            while len(self._prefixes) > _KEPT_PREFIXES:
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(key.digest)
        return found, ms


def _build_id(generator: Generator) -> str:
    """The llama.cpp build and CPU path that computed a state (a different build may lay K/V out differently)."""
    extra_buffers = use_extra_buffer_types(generator.config.extra_buffers)
    parts = (core.LLAMA_CPP_PYTHON_VERSION, core.system_info(), f"extra buffers {extra_buffers}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
