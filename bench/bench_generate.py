"""Generation speed of engine.Generator against llama-cpp-python's own Llama.

Same GGUF, same n_ctx / n_batch / threads / flash attention / KV type / extra CPU
buffer types (repacking, AMX: our "auto" choice, set on llama-cpp-python's model
parameters too), in the same run, interleaved round by round (the other side runs in pytest-benchmark's untimed
``setup``), so load from other processes hits both alike. Best-of-rounds throughput
is compared as a ratio. The decode figure is reported beside its physical bound:
memory bandwidth (a NumPy copy, measured here) / bytes of weights read per token.

Run: ``.venv/bin/python -m pytest bench/bench_generate.py -o python_files='bench_*.py'``
(``BAKEOFF_BENCH_ROUNDS``, default 3; ``BAKEOFF_BENCH_THREADS``, default
``engine.hardware.default_threads()``, half the usable CPUs, as the engine's own default;
``BAKEOFF_BENCH_EXTRA_BUFFERS``, default "auto").
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from engine.generation.generator import Generator, SamplingConfig
from engine.hardware import default_threads

ROUNDS = int(os.environ.get("BAKEOFF_BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("BAKEOFF_BENCH_THREADS", str(default_threads())))
N_CTX, N_BATCH = 1024, 512
PP, TG = 512, 128
GREEDY_NO_EOS = SamplingConfig(temperature=0.0, ignore_eos=True)
SYSTEM = ("You are the help desk of a public library. Answer briefly and politely, in plain English. "
          "If a question is about opening hours, fees, membership, printing or room booking, give the facts; "
          "otherwise point the reader to a librarian. Do not make up titles, authors or prices. ") * 4


EXTRA_BUFFERS = os.environ.get("BAKEOFF_BENCH_EXTRA_BUFFERS", "auto")


@pytest.fixture(scope="module")
def ours(generator_model_path):
    return Generator(generator_model_path, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=THREADS, flash_attn=False,
                     extra_buffers=EXTRA_BUFFERS)


@pytest.fixture(scope="module")
def theirs(generator_model_path, peer_llama):
    return peer_llama(generator_model_path, extra_buffers=EXTRA_BUFFERS, n_ctx=N_CTX, n_batch=N_BATCH,
                      n_ubatch=N_BATCH, n_threads=THREADS, n_threads_batch=THREADS, flash_attn=False, verbose=False,
                      seed=0)


def _interleaved(benchmark, ours_fn, theirs_fn) -> tuple[float, float]:
    """Best wall time (s) of each side over ROUNDS interleaved rounds, after one burn-in each."""
    ours_fn(), theirs_fn()
    ours_s, theirs_s = [], []

    def run_theirs():
        start = time.perf_counter()
        theirs_fn()
        theirs_s.append(time.perf_counter() - start)

    def run_ours():
        start = time.perf_counter()
        ours_fn()
        ours_s.append(time.perf_counter() - start)

    benchmark.pedantic(run_ours, setup=run_theirs, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(threads=THREADS, ours_s=ours_s, llama_cpp_python_s=theirs_s)
    return min(ours_s), min(theirs_s)


def _prompt_of(ours, theirs, n_tokens: int) -> str:
    """A text both tokenizers turn into exactly n_tokens tokens (BOS included)."""
    words = "the library opens at nine and closes at six on weekdays while saturday hours are shorter ".split()
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    tokens = ours.tokenize(text)[:n_tokens]
    text = ours.detokenize(tokens)
    assert len(ours.tokenize(text)) == n_tokens
    assert len(theirs.tokenize(text.encode(), add_bos=True, special=True)) == n_tokens
    return text


def test_prefill_pp512(benchmark, claims, ours, theirs):
    prompt = _prompt_of(ours, theirs, PP)

    def ours_fn():
        out = ours.generate(prompt, max_tokens=1, reuse_prefix=False)
        assert out.timings.prefill_tokens == PP

    def theirs_fn():
        theirs.reset()
        theirs.eval(theirs.tokenize(prompt.encode(), add_bos=True, special=True))
        theirs.sample(temp=0.0)

    ours_s, theirs_s = _interleaved(benchmark, ours_fn, theirs_fn)
    claims.add("generate", f"prefill pp{PP}, engine ({THREADS} threads)", PP / ours_s, "tok/s")
    claims.add("generate", f"prefill pp{PP}, llama-cpp-python Llama", PP / theirs_s, "tok/s")
    claims.add("generate", f"prefill pp{PP} ratio engine / llama-cpp-python", theirs_s / ours_s, "x", target=">= 0.97")


def test_decode_tg128(benchmark, claims, ours, theirs, generator_model_path):
    prompt = "Once upon a time"

    def ours_fn():
        out = ours.generate(prompt, max_tokens=TG, sampling=GREEDY_NO_EOS, reuse_prefix=False)
        assert len(out.tokens) == TG

    def theirs_fn():
        theirs.reset()
        tokens = theirs.tokenize(prompt.encode(), add_bos=True, special=True)
        for n, _ in enumerate(theirs.generate(tokens, temp=0.0, reset=True), start=1):
            if n == TG:
                break

    ours_s, theirs_s = _interleaved(benchmark, ours_fn, theirs_fn)
    ours_tps = TG / ours_s
    claims.add("generate", f"decode tg{TG}, engine ({THREADS} threads)", ours_tps, "tok/s")
    claims.add("generate", f"decode tg{TG}, llama-cpp-python Llama", TG / theirs_s, "tok/s")
    claims.add("generate", f"decode tg{TG} ratio engine / llama-cpp-python", theirs_s / ours_s, "x", target=">= 0.97")

    bandwidth = _copy_bandwidth_bytes_per_s()
    bound = bandwidth / ours.info.size_bytes  # every weight is read once per generated token
    claims.add("generate", "memory bandwidth (NumPy copy, read + write)", bandwidth / 1e9, "GB/s")
    claims.add("generate", "weights read per token", ours.info.size_bytes / 1e6, "MB")
    claims.add("generate", "decode bound = bandwidth / weight bytes", bound, "tok/s")
    claims.add("generate", "decode / bound", ours_tps / bound, "x", target="<= 1")


def test_ttft_with_reused_system_prompt(benchmark, claims, ours):
    questions = [f"Is the library open on day {i} of the month?" for i in range(ROUNDS + 2)]
    chat = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions]
    cold, warm = [], []

    def cold_fn():  # the whole prompt evaluated
        ours.reset()
        cold.append(ours.generate(chat[0], max_tokens=1).timings)

    def warm_fn():  # only the new question evaluated, system prompt from the KV cache
        ours.generate(chat[0], max_tokens=1)
        warm.append(ours.generate(chat[len(warm) + 1], max_tokens=1).timings)

    cold_fn(), warm_fn()
    cold.clear(), warm.clear()
    benchmark.pedantic(warm_fn, setup=cold_fn, rounds=ROUNDS, iterations=1)
    reused = warm[0].reused_tokens
    assert reused >= 200
    cold_ms = min(t.ttft_ms for t in cold)
    warm_ms = min(t.ttft_ms for t in warm)
    claims.add("generate", f"TTFT, {cold[0].prompt_tokens}-token chat prompt, no reuse", cold_ms, "ms")
    claims.add("generate", f"TTFT, {reused} tokens reused from the prefix cache", warm_ms, "ms")
    claims.add("generate", "TTFT ratio reused / not reused", warm_ms / cold_ms, "x", target="<= 0.25")


def _copy_bandwidth_bytes_per_s(n_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Best of ``repeats`` NumPy copies of a buffer far larger than the caches: bytes read + written per second."""
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best
