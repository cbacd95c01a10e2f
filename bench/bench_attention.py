"""The question's prefill over spliced positions, by attention setting: flash attention, ``n_ubatch``,
threads and K/V type, on this CPU.

A spliced RAG answer restores its passages' chunk states (~390 positions after the ~62-token
system prefix) and prefills only the question (~20-40 tokens incl. the chat template's tail),
which attends to every restored position. Each setting gets its own ``Generator`` (splice
slots as the engine makes it) and its own chunk states (a state depends on the K/V type and
the flash setting), then three prefills are timed per held-out question, each after the shared
system prefix (cached, as in ``bakeoff run``):

- "spliced": the question after k = 3 restored chunk states (what rag-spliced prefills);
- "alone": the same question tokens after the same prefix, no passages (the baked-style
  prompt: system prompt + question; the counterfactual the report's stage budget uses);
- "full": the passages and the question, every token evaluated (the full-prefill reference; last
  round only, it costs ten times the others).

Settings are interleaved question by question (their order rotated each question), in
``BAKEOFF_BENCH_ROUNDS`` rounds after an untimed one; every ratio is paired (the same question
and round under the default setting), its p50 printed with the range of the per-round p50s: a
difference counts as real when every round's ratio lies on the same side of 1 beyond 5 %. The
machine's load average is recorded before and after (shared 2-core machine: ratios only).

``n_ubatch`` is llama.cpp's micro-batch: the Session sets it equal to ``n_batch``, so it is varied
through ``n_batch``. q8_0 and q4_0 keys are not rotated by our own shift (csrc/state_shift.h handles
f16-family keys): llama.cpp K-shifts them inside the prefill, which "spliced" then includes.

Run: ``.venv/bin/python -m pytest bench/bench_attention.py -o python_files='bench_*.py' -s``
(``BAKEOFF_BENCH_QUESTIONS``, default 8; ``BAKEOFF_BENCH_ROUNDS``, default 3). Writes
``bench/results/attention.json``.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from engine import Engine
from engine.answer.chunk_states import ChunkStates
from engine.embedding.embedder import Embedder
from engine.generation.generator import Generator
from engine.generation.kv_cache import ChunkKvCache
from engine.hardware import default_threads
from engine.kb import KnowledgeBase
from engine.questions.qa import load_questions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "engine" / "data" / "kb" / "docs"
QA = ROOT / "engine" / "data" / "kb" / "qa.jsonl"
QUESTIONS = int(os.environ.get("BAKEOFF_BENCH_QUESTIONS", "8"))
ROUNDS = int(os.environ.get("BAKEOFF_BENCH_ROUNDS", "3"))
K = 3
RESULTS = ROOT / "bench" / "results" / "attention.json"
THREADS = default_threads()
_OTHER_THREADS = 2 if THREADS == 1 else 1
#: One factor at a time around the engine's default (flash attention auto, n_batch = n_ubatch 512,
#: the default thread count, f16 K/V). A quantized V cache needs flash attention, so those set it on.
#: bf16 is left out: its moved states fall back to llama.cpp's K-shift, whose CPU RoPE takes only f16
#: and f32 and aborts the process on bf16 keys (ggml-cpu ops.cpp, ggml_compute_forward_rope).
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "flash on": {"flash_attn": True},
    "flash off": {"flash_attn": False},
    "n_ubatch 32": {"n_batch": 32},
    "n_ubatch 64": {"n_batch": 64},
    f"threads {_OTHER_THREADS}": {"n_threads": _OTHER_THREADS},
    "kv f32": {"kv_type": "f32"},
    "kv q8_0": {"kv_type": "q8_0", "flash_attn": True},
    "kv q4_0": {"kv_type": "q4_0", "flash_attn": True},
}
WAYS = ("spliced", "alone", "full")
#: A ratio to the default counts as a real difference beyond this, on the same side in every round.
REAL = 0.05


def _prompts(generator_model_path: Path, kb: KnowledgeBase) -> list[tuple[list[int], list[int], Any]]:
    """(whole prompt, prefix + question tail, blocks) of each held-out question in the spliced layout."""
    questions = [q.question for q in load_questions(QA) if q.split == "heldout"][:QUESTIONS]
    prompts = []
    with Engine(generator_model_path, kb=kb, k=K, kv_cache=ChunkKvCache(None)) as engine:
        for question in questions:
            # "prefill" builds the spliced layout without fetching states: each setting computes its own
            prepared, _ = engine._prepare(question, "rag", 1, None, "prefill")
            end = prepared.blocks[-1].start + len(prepared.blocks[-1].tokens)
            prompts.append((list(prepared.tokens), [*prepared.prefix, *prepared.tokens[end:]], prepared))
    return prompts


def _p50_ratio(values: dict[str, list[list[float]]], setting: str) -> tuple[float, float, float]:
    """p50 of the paired ratios setting/default over every (round, question), and the range of the per-round p50s."""
    rounds = [[a / b for a, b in zip(mine, base)] for mine, base in zip(values[setting], values["default"])]
    per_round = [statistics.median(r) for r in rounds]
    return statistics.median([x for r in rounds for x in r]), min(per_round), max(per_round)


def _verdict(ratio: float, low: float, high: float) -> str:
    if high < 1 - REAL:
        return "faster"
    if low > 1 + REAL:
        return "slower"
    return "within noise"


def test_attention_settings(generator_model_path, embedder_dir, tmp_path_factory, claims):
    load_before = os.getloadavg()
    kb = KnowledgeBase.build(DOCS, tmp_path_factory.mktemp("kb_attention") / "kb", embedder=Embedder(embedder_dir))
    prompts = _prompts(generator_model_path, kb)
    generators: dict[str, Generator] = {}
    splices: dict[str, list] = {}
    for name, setting in SETTINGS.items():
        generator = Generator(generator_model_path, n_ctx=2048, splice_slots=K,
                              **{"n_threads": THREADS, **setting})
        states = ChunkStates(generator, ChunkKvCache(None, ram_bytes=8 * 2**30))
        splices[name] = [states.fetch(p.prefix, p.blocks, {}).splices for _, _, p in prompts]
        generators[name] = generator
    names = list(SETTINGS)
    # ms[way][setting][round][question]; round 0 is the untimed burn-in
    ms: dict[str, dict[str, list[list[float]]]] = {w: {n: [] for n in names} for w in WAYS}
    shifted: dict[str, int] = {}
    for round_ in range(ROUNDS + 1):
        for way in WAYS:
            for name in names:
                ms[way][name].append([])
        for i, (tokens, alone, _) in enumerate(prompts):
            for name in names[i % len(names):] + names[: i % len(names)]:
                generator = generators[name]
                spliced = generator.generate(tokens, max_tokens=1, splices=splices[name][i]).timings
                by_way = {"spliced": spliced.prefill_ms,
                          "alone": generator.generate(alone, max_tokens=1).timings.prefill_ms}
                if round_ == ROUNDS:  # the full prefill is a reference only, and costs ten times the others
                    by_way["full"] = generator.generate(tokens, max_tokens=1).timings.prefill_ms
                for way, value in by_way.items():
                    ms[way][name][-1].append(value)
                shifted[name] = spliced.k_shifted_tokens
    timed = {w: {n: [r for r in rounds[1:] if r] for n, rounds in by_setting.items()} for w, by_setting in ms.items()}
    load_after = os.getloadavg()

    rows = []
    for name in names:
        row: dict[str, Any] = {"setting": name, **SETTINGS[name], "k_shifted_tokens": shifted[name]}
        for way in WAYS:
            flat = [x for r in timed[way][name] for x in r]
            row[f"{way}_p50_ms"] = statistics.median(flat)
            row[f"{way}_ratio"], row[f"{way}_ratio_low"], row[f"{way}_ratio_high"] = _p50_ratio(timed[way], name)
            row[f"{way}_verdict"] = _verdict(row[f"{way}_ratio"], row[f"{way}_ratio_low"], row[f"{way}_ratio_high"])
        attention = [[x - a for x, a in zip(sr, ar)] for sr, ar in zip(timed["spliced"][name], timed["alone"][name])]
        row["spliced_minus_alone_p50_ms"] = statistics.median([x for r in attention for x in r])
        rows.append(row)

    tail = statistics.median(len(a) - len(p.prefix) for _, a, p in prompts)
    cached = statistics.median(len(t) - len(a) + len(p.prefix) for t, a, p in prompts)
    print(f"\nprefill of the question over spliced positions, {QUESTIONS} held-out questions x {ROUNDS} rounds, "
          f"k = {K}, n_ctx 2048, default {THREADS} thread(s); question {tail:.0f} tokens (p50) after {cached:.0f} "
          f"cached positions; load {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
          "p50 ms, and p50 of paired ratios to the default [range of per-round p50s]\n"
          "| setting | spliced | ratio | alone | ratio | spliced - alone | full | ratio | K-shifted |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for way in WAYS:
            ratio = f"{r[f'{way}_ratio']:.2f} [{r[f'{way}_ratio_low']:.2f}-{r[f'{way}_ratio_high']:.2f}]"
            cells.append(f"{r[f'{way}_p50_ms']:.1f} | {ratio}")
            if way == "alone":
                cells.append(f"{r['spliced_minus_alone_p50_ms']:.1f}")
        print(f"| {r['setting']} | " + " | ".join(cells) + f" | {r['k_shifted_tokens']} |")
    for r in rows[1:]:
        claims.add("attention", f"spliced question prefill, {r['setting']} / default ({r['spliced_verdict']})",
                   r["spliced_ratio"], "x")
    default = rows[0]
    claims.add("attention", "spliced question prefill, default", default["spliced_p50_ms"], "ms")
    claims.add("attention", "question alone (no passages), default", default["alone_p50_ms"], "ms")
    claims.add("attention", "spliced / alone, default (attention over spliced positions)",
               default["spliced_p50_ms"] / default["alone_p50_ms"], "x")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "questions": QUESTIONS, "rounds": ROUNDS, "k": K, "n_ctx": 2048, "default_threads": THREADS,
        "question_tokens_p50": tail, "cached_positions_p50": cached,
        "loadavg_before": load_before, "loadavg_after": load_after, "real_beyond": REAL, "rows": rows,
        "ms": timed}, indent=2))
    assert all(r["spliced_p50_ms"] > 0 for r in rows)
