"""The chunk states a spliced prompt needs: looked up in the chunk-KV cache, or computed and kept.

The facade asks for them between building the prompt and generating; this module
knows what a state depends on (:class:`engine.generation.kv_cache.StateKey`) and turns each
block of a spliced-layout prompt (:mod:`engine.answer.spliced_prompt`) into a
:class:`engine.generation.splice.Splice`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine._native import core
from engine.answer.spliced_prompt import ChunkBlock
from engine.generation.generator import Generator
from engine.generation.kv_cache import ChunkKvCache, StateKey, file_sha256, tokens_sha256
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
        splices = []
        computed = 0
        for block in blocks:
            found = self.cache.get(key, block.text, block.tokens, position)
            if found is None:
                state = self.generator.chunk_state(prefix, block.tokens, adapters=dict(adapters))
                found = self.cache.put(key, block.text, block.tokens, position, state)
                computed += 1
            splices.append(Splice(block.start, found.state, found.n_tokens, found.position))
        return FetchedStates(tuple(splices), (time.perf_counter() - started) * 1000.0, computed)


def _build_id(generator: Generator) -> str:
    """The llama.cpp build and CPU path that computed a state (a different build may lay K/V out differently)."""
    extra_buffers = use_extra_buffer_types(generator.config.extra_buffers)
    parts = (core.LLAMA_CPP_PYTHON_VERSION, core.system_info(), f"extra buffers {extra_buffers}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
