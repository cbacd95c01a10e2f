"""How many threads generation should use on this machine, measured.

More threads than free cores can make llama.cpp many times slower on a busy
machine, and fewer leave an idle one half used. ``engine.hardware.default_threads``
is the one default policy; :func:`fastest_thread_count` measures instead of assuming.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from engine.errors import InputError
from engine.generation.generator import Generator
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


__all__ = ["fastest_thread_count"]
