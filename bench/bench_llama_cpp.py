"""Against what a user would build instead: llama-cpp-python's ``Llama`` over the same retrieved passages.

The peer row of issue 21. Seven ways answer each held-out question, all with the same GGUF
file (SmolLM2-135M-Instruct Q4_1), the same ``n_ctx`` (2048), ``n_threads`` and
``n_threads_batch`` (``BAKEOFF_BENCH_THREADS``, default 2, the threads of ``bakeoff run``'s
quick profile and of the issue's own trial), ``n_batch`` 512, greedy, ``max_tokens`` 32:

1. **llama-cpp-python, user's prompt**: ``Llama.create_chat_completion(stream=True)`` with the
   GGUF's chat template (``chat_format`` "chat_template.default", what ``Llama`` picks for this
   model), a one-line system prompt and the 3 retrieved chunks as plain numbered text;
2. **llama-cpp-python, engine's prompt**: ``Llama.create_completion(stream=True)`` given the token
   ids of the engine's own rendered "rag" prompt (from the answer layer, ``Engine._prepare``), so
   the engine's rag is compared with llama-cpp-python on the same tokens (checked per question);
2b. **the same, flash attention on**: as 2, with ``Llama(flash_attn=True)``, the attention the
   engine's default ("auto") resolves to on a CPU; 1 and 2 keep llama-cpp-python's default (off),
   which a user gets;
3. **engine rag**: ``Engine.stream(mode="rag", splice="off")``, every prompt token evaluated;
4. **engine rag-spliced**: ``splice="on"`` with warm chunk states (computed before timing; the
   run checks none was computed while timed);
5. **engine hybrid-spliced**: the same with the LoRA adapter attached;
6. **engine baked**: the adapter alone, no retrieval.

Every row is end to end. The engine's rag modes retrieve inside the call (``Engine.retrieve``:
embed, HNSW + bm25, fusion, MMR); the peer's retrieval is the same call on the same knowledge
base, timed and added, so all rows with passages rest on the same 3 chunks (checked per
question). TTFT runs from the call (before retrieval) to the first non-empty piece of text
streamed; "total" to the stream's end. TTFT without retrieval is printed too.

**Prefix reuse, treated alike.** llama-cpp-python reuses the longest common prefix of the
tokens in its context (``Llama.generate``); the engine's session does the same. Each way runs in
a context of its own (three ``Llama`` objects, four ``Engine`` objects sharing one knowledge
base), so what a way reuses is what it would reuse serving only its own kind of request: the
chat header and system prompt (and the engine's ``Sources:`` line), not another way's prompt
for the same question. A burn-in question puts each context in that steady state before
timing. Reused tokens are reported per way. The knowledge base is opened with its query cache
off (``query_cache_size=0``): the ways ask the same questions, and a cached query vector would
give the later ways retrieval the first one paid for.

**Load.** The ways run interleaved question by question, their order rotated by one each
question, so load from other processes falls on all alike; only the ratios of one run mean
anything on a shared machine. The load average before and after and ``engine.hardware`` are
saved with the results. p95 over 8 questions is their maximum (nearest rank).

**One llama.cpp build in one process.** llama-cpp-python and ``engine._core`` use the same
files of the llama-cpp-python wheel, so both run here. The wheel holds no symlinks, so its
``libllama.so`` and ``libllama.so.0`` are two identical files: llama-cpp-python's ctypes opens
the first, ``_core`` the second (its SONAME), and both are mapped, byte-identical code with
their own globals, over one ``libggml`` (both load it by SONAME). The run checks exactly that
(same sha256, one of each ggml library); no child process is needed. llama.cpp's extra CPU buffer types are set alike on both sides (off on this AMX CPU: a plain
``Llama()`` dies of SIGILL on its first multi-token batch there, llama.cpp issue 20824).

Run: ``.venv/bin/python -m pytest bench/bench_llama_cpp.py -o python_files='bench_*.py' -s``
(``BAKEOFF_BENCH_QUESTIONS``, default 8; ``BAKEOFF_BENCH_THREADS``, default 2;
``BAKEOFF_BENCH_ADAPTER``, see the ``adapter_path`` fixture). Writes ``bench/results/llama_cpp.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import Engine
from engine.answer.types import Mode, SpliceMode
from engine.embedding.embedder import Embedder
from engine.generation.kv_cache import ChunkKvCache
from engine.hardware import hardware
from engine.kb import Hit, KnowledgeBase
from engine.questions.qa import load_questions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "engine" / "data" / "kb" / "docs"
QA = ROOT / "engine" / "data" / "kb" / "qa.jsonl"
QUESTIONS = int(os.environ.get("BAKEOFF_BENCH_QUESTIONS", "8"))
THREADS = int(os.environ.get("BAKEOFF_BENCH_THREADS", "2"))
N_CTX, K, MAX_TOKENS = 2048, 3, 32
RESULTS = ROOT / "bench" / "results" / "llama_cpp.json"
#: The user's prompt: one line of instructions, the passages as plain numbered text.
USER_SYSTEM_PROMPT = "Answer the question in one short sentence using only the numbered passages."

PEER_USER, PEER_SAME = "llama-cpp-python, user's prompt", "llama-cpp-python, engine's prompt"
PEER_SAME_FA = "llama-cpp-python, engine's prompt, flash attention"
#: The llama-cpp-python ways, the rows each engine way is divided by, and their flash attention.
PEERS = {PEER_USER: ("user", False), PEER_SAME: ("same", False), PEER_SAME_FA: ("same_fa", True)}
WAYS = (PEER_USER, PEER_SAME, PEER_SAME_FA, "engine rag", "engine rag-spliced", "engine hybrid-spliced", "engine baked")
#: The engine's ways: mode and splice.
ENGINE_WAYS: dict[str, tuple[Mode, SpliceMode]] = {"engine rag": ("rag", "off"), "engine rag-spliced": ("rag", "on"),
               "engine hybrid-spliced": ("hybrid", "on"), "engine baked": ("baked", "off")}


@dataclass(frozen=True)
class Run:
    """One way on one question. Times in ms from the call; retrieval is part of both."""

    ttft_ms: float
    total_ms: float
    retrieval_ms: float
    prompt_tokens: int
    reused_tokens: int  # taken from the context's previous request (prefix reuse)
    spliced_tokens: int  # taken from chunk states
    answer_tokens: int
    chunk_ids: tuple[int, ...]  # the passages the prompt holds


def _questions() -> list[str]:
    return [q.question for q in load_questions(QA) if q.split == "heldout"]


def _user_prompt(question: str, hits: Iterable[Hit]) -> str:
    passages = "\n\n".join(f"{n}. {hit.text}" for n, hit in enumerate(hits, 1))
    return f"Passages:\n\n{passages}\n\nQuestion: {question}"


def _first_and_last(started: float, pieces: Iterable[str]) -> tuple[float, float]:
    """ms from ``started`` to the first non-empty piece and to the last; an answer that is only
    an end of turn has its first token at its end."""
    first = None
    for piece in pieces:
        if first is None and piece:
            first = time.perf_counter()
    last = time.perf_counter()
    return ((first or last) - started) * 1000, (last - started) * 1000


class Peer:
    """One llama-cpp-python ``Llama`` called as a user calls it, with each request's token counts.

    ``Llama`` streams no token counts, so its ``generate`` (which every completion goes through) is
    wrapped to see the prompt's tokens, what its prefix match will reuse, and the tokens produced:
    a Python generator around its own, a microsecond per token.
    """

    def __init__(self, llama) -> None:
        self.llama = llama
        self.counts = {"prompt_tokens": 0, "reused_tokens": 0, "answer_tokens": 0}
        generate = llama.generate

        def counted(tokens, **options) -> Iterator[int]:
            cached = llama._input_ids[:llama.n_tokens]
            self.counts = {"prompt_tokens": len(tokens), "reused_tokens": llama.longest_token_prefix(cached, tokens),
                           "answer_tokens": 0}
            for token in generate(tokens, **options):
                self.counts["answer_tokens"] += 1
                yield token

        llama.generate = counted

    def chat(self, engine: Engine, question: str) -> Run:
        """The user's way: retrieve, number the chunks, ``create_chat_completion``."""
        started = time.perf_counter()
        hits = engine.retrieve(question).hits
        retrieval_ms = (time.perf_counter() - started) * 1000
        messages = [{"role": "system", "content": USER_SYSTEM_PROMPT},
                    {"role": "user", "content": _user_prompt(question, hits)}]
        stream = self.llama.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
        ttft, total = _first_and_last(started, (c["choices"][0]["delta"].get("content") or "" for c in stream))
        return Run(ttft, total, retrieval_ms, spliced_tokens=0, chunk_ids=tuple(h.chunk_id for h in hits),
                   **self.counts)

    def engine_prompt(self, engine: Engine, question: str) -> Run:
        """The engine's rag prompt, as token ids, completed by llama-cpp-python; building it is not timed
        (it is the engine's work, and inside the engine's own rows)."""
        started = time.perf_counter()
        hits = engine.retrieve(question).hits
        retrieval_ms = (time.perf_counter() - started) * 1000
        prepared, _ = engine._prepare(question, "rag", MAX_TOKENS, hits, "off")
        generating = time.perf_counter()
        stream = self.llama.create_completion(list(prepared.tokens), max_tokens=MAX_TOKENS, temperature=0.0,
                                              stream=True)
        ttft, total = _first_and_last(generating, (c["choices"][0]["text"] for c in stream))
        return Run(retrieval_ms + ttft, retrieval_ms + total, retrieval_ms, spliced_tokens=0,
                   chunk_ids=tuple(p.chunk_id for p in prepared.passages), **self.counts)


def _engine_run(engine: Engine, question: str, mode: Mode, splice: SpliceMode) -> Run:
    started = time.perf_counter()
    with engine.stream(question, mode, max_tokens=MAX_TOKENS, splice=splice) as stream:
        ttft, total = _first_and_last(started, stream)
    answer = stream.answer
    assert answer is not None
    assert answer.timings.kv_computed == 0, f"{mode} splice={splice}: a chunk state was computed while timed"
    g = answer.timings.generation
    return Run(ttft, total, answer.timings.retrieval_ms, g.prompt_tokens, g.reused_tokens, g.spliced_tokens,
               g.decode_tokens, tuple(c.chunk_id for c in answer.citations))


def _llama_cpp_libraries() -> dict[str, str]:
    """The llama.cpp and ggml libraries mapped into this process, with the sha256 of each."""
    maps = Path("/proc/self/maps").read_text()
    paths = {line.split()[-1] for line in maps.splitlines() if "/libllama.so" in line or "/libggml" in line}
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sorted(paths)}


def _check_one_build(libraries: dict[str, str]) -> None:
    """Every libllama mapped is the same bytes, and each ggml library is mapped once."""
    llama = {digest for path, digest in libraries.items() if "/libllama.so" in path}
    assert len(llama) == 1, f"different libllama files in one process: {libraries}"
    ggml = [Path(path).name.split(".so")[0] for path in libraries if "/libggml" in path]
    assert ggml and len(ggml) == len(set(ggml)), f"a ggml library mapped twice: {libraries}"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


@pytest.fixture(scope="module")
def kb(embedder_dir, tmp_path_factory) -> Iterator[KnowledgeBase]:
    folder = tmp_path_factory.mktemp("kb_peer") / "kb"
    KnowledgeBase.build(DOCS, folder, embedder=Embedder(embedder_dir)).close()
    opened = KnowledgeBase.open(folder, query_cache_size=0)
    yield opened
    opened.close()


@dataclass
class Ways:
    """Each way's context, and how each way answers a question."""

    engines: dict[str, Engine]
    answer: dict[str, Callable[[str], Run]]
    peer_chat_format: str


@pytest.fixture(scope="module")
def ways(generator_model_path, adapter_path, kb, peer_llama) -> Iterator[Ways]:
    engine = functools.partial(Engine, generator_model_path, n_ctx=N_CTX, n_threads=THREADS)
    cache = ChunkKvCache(None, ram_bytes=2**30)  # RAM only: states keyed by adapter, shared by both spliced ways
    engines = {
        "engine rag": engine(kb=kb, k=K),
        "engine rag-spliced": engine(kb=kb, k=K, kv_cache=cache),
        "engine hybrid-spliced": engine(adapter=adapter_path, kb=kb, k=K, kv_cache=cache),
        "engine baked": engine(adapter=adapter_path),
    }
    peers = {way: Peer(peer_llama(generator_model_path, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                                  flash_attn=flash_attn, verbose=False)) for way, (_, flash_attn) in PEERS.items()}
    retriever = engines["engine rag"]  # the peer's vector store: the same search, same k and MMR weight
    answer: dict[str, Callable[[str], Run]] = {
        PEER_USER: lambda q: peers[PEER_USER].chat(retriever, q),
        PEER_SAME: lambda q: peers[PEER_SAME].engine_prompt(retriever, q),
        PEER_SAME_FA: lambda q: peers[PEER_SAME_FA].engine_prompt(retriever, q),
    }
    for way, (mode, splice) in ENGINE_WAYS.items():
        answer[way] = functools.partial(_engine_run, engines[way], mode=mode, splice=splice)
    yield Ways(engines, answer, peers[PEER_USER].llama.chat_format)
    for opened in engines.values():
        opened.close()


def test_against_llama_cpp_python(ways, adapter_path, claims):
    questions = _questions()
    timed, burn_in = questions[:QUESTIONS], questions[-1]
    libraries = _llama_cpp_libraries()
    _check_one_build(libraries)
    load_before = os.getloadavg()
    for question in (*timed, burn_in):  # the chunk states the spliced ways will find warm
        for way in ("engine rag-spliced", "engine hybrid-spliced"):
            ways.engines[way].ask(question, ENGINE_WAYS[way][0], max_tokens=1, splice="on")
    for way in WAYS:  # burn-in: pages, Numba, ONNX Runtime, and each context's system prompt
        ways.answer[way](burn_in)
    runs: dict[str, list[Run]] = {way: [] for way in WAYS}
    for n, question in enumerate(timed):
        for way in WAYS[n % len(WAYS):] + WAYS[:n % len(WAYS)]:
            runs[way].append(ways.answer[way](question))
        same = {way: runs[way][-1].chunk_ids for way in (*PEERS, "engine rag")}
        assert len({tuple(sorted(ids)) for ids in same.values()}) == 1, f"{question!r}: passages differ: {same}"
        for way in (PEER_SAME, PEER_SAME_FA):
            assert runs[way][-1].prompt_tokens == runs["engine rag"][-1].prompt_tokens, question
        print(f"q{n + 1}: TTFT " + ", ".join(f"{way} {runs[way][-1].ttft_ms:.0f}" for way in WAYS) + " ms", flush=True)
    load_after = os.getloadavg()

    p50 = statistics.median
    rows = {}
    for way in WAYS:
        r = runs[way]
        rows[way] = {
            "ttft_p50_ms": p50([x.ttft_ms for x in r]), "ttft_p95_ms": _p95([x.ttft_ms for x in r]),
            "ttft_without_retrieval_p50_ms": p50([x.ttft_ms - x.retrieval_ms for x in r]),
            "total_p50_ms": p50([x.total_ms for x in r]), "total_p95_ms": _p95([x.total_ms for x in r]),
            "retrieval_p50_ms": p50([x.retrieval_ms for x in r]),
            "prompt_tokens_p50": p50([x.prompt_tokens for x in r]),
            "prompt_tokens_range": [min(x.prompt_tokens for x in r), max(x.prompt_tokens for x in r)],
            "reused_tokens_p50": p50([x.reused_tokens for x in r]),
            "spliced_tokens_p50": p50([x.spliced_tokens for x in r]),
            "answer_tokens_p50": p50([x.answer_tokens for x in r]),
        }
    for way in WAYS:
        for peer, (key, _) in PEERS.items():
            rows[way][f"ttft_p50_over_peer_{key}"] = rows[way]["ttft_p50_ms"] / rows[peer]["ttft_p50_ms"]
            rows[way][f"ttft_paired_median_over_peer_{key}"] = p50(
                [a.ttft_ms / b.ttft_ms for a, b in zip(runs[way], runs[peer])])
    hw = hardware()
    devices = ", ".join(d.description or d.name for d in hw.llama_devices)
    print(f"\nagainst llama-cpp-python: {len(timed)} held-out questions, k = {K}, {THREADS} thread(s), n_ctx {N_CTX}, "
          f"max_tokens {MAX_TOKENS}, greedy, "
          f"adapter {adapter_path.name}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"{devices}")
    print("| way | TTFT p50 | TTFT p95 | TTFT p50 w/o retrieval | total p50 | total p95 | prompt tokens p50 "
          "| reused p50 | answer tokens p50 | TTFT / peer (user's prompt) | TTFT / peer (same prompt) "
          "| TTFT / peer (same prompt, flash attention) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for way, r in rows.items():
        print(f"| {way} | {r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | {r['ttft_without_retrieval_p50_ms']:.0f} "
              f"| {r['total_p50_ms']:.0f} | {r['total_p95_ms']:.0f} | {r['prompt_tokens_p50']:.0f} "
              f"| {r['reused_tokens_p50']:.0f} | {r['answer_tokens_p50']:.0f} | {r['ttft_p50_over_peer_user']:.2f} "
              f"| {r['ttft_p50_over_peer_same']:.2f} | {r['ttft_p50_over_peer_same_fa']:.2f} |")

    # The targets: the engine ahead of the user's alternative on every row, its rag no slower
    # than llama-cpp-python on the same prompt, the spliced ways "far below" (taken as half).
    targets = {"engine rag": ("<= 1.0", "<= 1.0"), "engine rag-spliced": ("<= 0.5", "<= 0.5"),
               "engine hybrid-spliced": ("<= 0.5", "<= 0.5"), "engine baked": ("<= 1.0", None)}
    for way in WAYS:
        claims.add("peer", f"TTFT p50, {way} (end to end, {len(timed)} q, {THREADS} threads)",
                   rows[way]["ttft_p50_ms"], "ms")
    for way, (user_target, same_target) in targets.items():
        claims.add("peer", f"TTFT p50 {way} / llama-cpp-python, user's prompt", rows[way]["ttft_p50_over_peer_user"],
                   "x", user_target)
        claims.add("peer", f"TTFT p50 {way} / llama-cpp-python, the engine's prompt",
                   rows[way]["ttft_p50_over_peer_same"], "x", same_target)
        claims.add("peer", f"TTFT p50 {way} / llama-cpp-python, the engine's prompt, flash attention",
                   rows[way]["ttft_p50_over_peer_same_fa"], "x", same_target)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "questions": len(timed), "k": K, "threads": THREADS, "n_ctx": N_CTX, "max_tokens": MAX_TOKENS,
        "peer_chat_format": ways.peer_chat_format, "adapter": str(adapter_path),
        "load_average_before": load_before, "load_average_after": load_after, "llama_cpp_libraries": libraries,
        "hardware": dataclasses.asdict(hw), "ways": rows,
        "runs": {way: [dataclasses.asdict(x) for x in r] for way, r in runs.items()},
    }, indent=2))
