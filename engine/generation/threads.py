"""How generation should run on this machine, measured: threads, and the attention setting.

More threads than free cores can make llama.cpp many times slower on a busy
machine, and fewer leave an idle one half used. ``engine.hardware.default_threads``
is the one default policy; :func:`fastest_thread_count` measures instead of assuming.

A spliced RAG answer prefills a short question over a long cache of restored chunk
states; which of llama.cpp's attention kernels does that faster (flash attention or the
plain KQ-softmax-V product) depends on the CPU and the cache length, so
:func:`fastest_attention` measures that too (``bench/bench_attention.py`` compares every
setting: flash, ``n_ubatch``, threads and K/V type).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import InputError
from engine.generation.generator import Generator
from engine.generation.splice import Splice
from engine.generation.types import SamplingConfig, _is_int
from engine.hardware import default_threads, usable_cpus


def fastest_thread_count(model_path: str | os.PathLike[str], candidates: Sequence[int] | None = None, *,
                         prompt_tokens: int = 192, rounds: int = 2, **config: Any) -> tuple[int, dict[int, float]]:
    """Measure which generation thread count answers fastest on this machine, now.

    Each candidate prefills a ``prompt_tokens``-token prompt and decodes 8 tokens,
    ``rounds`` times interleaved with the others; the best time counts.

    Args:
        model_path: the GGUF to measure with.
        candidates: thread counts to try (default: 1, half the CPUs and all of them).
        prompt_tokens: prompt length of the probe (a RAG prompt is a few hundred).
        rounds: interleaved repetitions per candidate.
        **config: other ``Generator`` settings (e.g. ``extra_buffers``).

    Returns:
        The fastest count, and each candidate's best probe time in milliseconds.

    Raises:
        InputError: a candidate is not an integer >= 1.
        ModelError: the model cannot be loaded.
    """
    chosen = candidates or (1, default_threads(), usable_cpus())
    if any(not _is_int(n) or n < 1 for n in chosen):
        raise InputError(f"candidates must be integers >= 1, got {candidates!r}")
    counts = sorted(set(chosen))
    n_ctx = -(-(prompt_tokens + 64) // 256) * 256  # llama.cpp sizes contexts in steps of 256 tokens
    generators = {n: Generator(model_path, n_threads=n, n_ctx=n_ctx, **config) for n in counts}
    probe = list(range(1000, 1000 + prompt_tokens))  # token ids: no tokenizer round trip
    best = {n: math.inf for n in counts}
    greedy = SamplingConfig(ignore_eos=True)
    for _ in range(rounds):
        for n, generator in generators.items():
            timings = generator.generate(probe, max_tokens=8, sampling=greedy, reuse_prefix=False,
                                         truncate="left").timings
            best[n] = min(best[n], timings.total_ms)
    return min(counts, key=lambda n: best[n]), best


#: The flash-attention settings :func:`fastest_attention` compares, by name (``Generator(flash_attn=)``):
#: on and off compute the same attention (within f16 rounding); "auto" lets llama.cpp decide, which
#: resolves to on wherever the backend has the kernel (every CPU), so "auto" against "flash on" shows
#: the probe's own noise.
FLASH_SETTINGS: dict[str, bool | None] = {"auto": None, "flash on": True, "flash off": False}
#: A setting replaces "auto" only when its best prefill is faster by more than this share.
FLASH_MARGIN = 0.05


@dataclass(frozen=True)
class AttentionProbe:
    """The prompt :func:`fastest_attention` times by default: a spliced RAG prompt of three 128-token
    passages after a 64-token prefix (real ones are ~390 spliced tokens), and a 32-token question."""

    prefix_tokens: int = 64
    chunks: int = 3
    chunk_tokens: int = 128
    question_tokens: int = 32

    def __str__(self) -> str:
        return f"a {self.question_tokens}-token question over {self.chunks * self.chunk_tokens} spliced positions"


ATTENTION_PROBE = AttentionProbe()


def fastest_attention(model_path: str | os.PathLike[str], *, n_threads: int | None = None,
                      prefix_tokens: int = ATTENTION_PROBE.prefix_tokens, chunks: int = ATTENTION_PROBE.chunks,
                      chunk_tokens: int = ATTENTION_PROBE.chunk_tokens,
                      question_tokens: int = ATTENTION_PROBE.question_tokens, rounds: int = 3,
                      **config: Any) -> tuple[str, dict[str, float]]:
    """Measure which flash-attention setting prefills a short question over a long spliced cache fastest, now.

    Each setting (``FLASH_SETTINGS``) gets a generator with ``chunks`` splice slots; ``chunks``
    chunk states of ``chunk_tokens`` tokens are computed after a ``prefix_tokens`` prefix and spliced
    in place, then a ``question_tokens`` question after them is prefilled (the prefix cached, as in a
    spliced answer); ``rounds`` times interleaved with the other settings, the best time counts.
    "auto" is kept unless another setting is faster by more than ``FLASH_MARGIN``.

    Args:
        model_path: the GGUF to measure with.
        n_threads: generation threads (None: the Generator's default), as the engine will use.
        prefix_tokens, chunks, chunk_tokens, question_tokens: the probe's shape (default: ``ATTENTION_PROBE``).
        rounds: interleaved repetitions per setting.
        **config: other ``Generator`` settings (e.g. ``kv_type``).

    Returns:
        The chosen setting's name (a key of ``FLASH_SETTINGS``), and each setting's best prefill in ms.

    Raises:
        InputError: a size is not an integer >= 1, the prompt does not fit a 2048-token context, or
            ``kv_type`` is quantized (its V cache needs flash attention: there is nothing to choose).
        ModelError: the model cannot be loaded.
    """
    sizes = {"prefix_tokens": prefix_tokens, "chunks": chunks, "chunk_tokens": chunk_tokens,
             "question_tokens": question_tokens, "rounds": rounds}
    for name, value in sizes.items():
        if not _is_int(value) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    # token ids: no tokenizer round trip; distinct, so no chunk repeats the prefix or another chunk
    prefix = list(range(1000, 1000 + prefix_tokens))
    blocks = [list(range(start, start + chunk_tokens))
              for start in range(2000, 2000 + chunks * chunk_tokens, chunk_tokens)]
    prompt = [*prefix, *(t for block in blocks for t in block), *range(9000, 9000 + question_tokens)]
    if len(prompt) + 1 > 2048:
        raise InputError(f"the probe's prompt is {len(prompt)} tokens: it must fit a 2048-token context")
    generators: dict[str, Generator] = {}
    try:
        for name, flash in FLASH_SETTINGS.items():
            generators[name] = Generator(model_path, n_threads=n_threads, n_ctx=2048, flash_attn=flash,
                                         splice_slots=chunks, **config)
        splices = {}
        for name, generator in generators.items():
            # every state computed at its own place: the probe times the attention, not a shift
            splices[name] = [Splice(len(prefix) + i * chunk_tokens,
                                    generator.chunk_state([*prefix, *(t for b in blocks[:i] for t in b)], block),
                                    chunk_tokens, len(prefix) + i * chunk_tokens) for i, block in enumerate(blocks)]
            generator.generate(prompt, max_tokens=1, splices=splices[name])  # leaves the prefix cached, warm
        best = dict.fromkeys(generators, math.inf)
        for _ in range(rounds):
            for name, generator in generators.items():
                timings = generator.generate(prompt, max_tokens=1, splices=splices[name]).timings
                best[name] = min(best[name], timings.prefill_ms)
    finally:  # each holds a model and a 2048-token context: freed also when one is refused (a quantized
        # kv_type refuses flash off after auto and on were made)
        for generator in generators.values():
            generator.close()
    fastest = min(best, key=lambda name: best[name])
    return (fastest if best[fastest] < best["auto"] * (1 - FLASH_MARGIN) else "auto"), best


__all__ = ["ATTENTION_PROBE", "AttentionProbe", "FLASH_MARGIN", "FLASH_SETTINGS", "fastest_attention",
           "fastest_thread_count"]
