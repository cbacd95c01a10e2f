"""Memory over many questions: the resident set of a process that asks an ``Engine`` again and again.

``rss_over_asks`` asks, in a child process (so that only the engine's memory is
measured), ``asks`` questions in rag mode after a warm-up, and reports the resident
set size (``/proc/self/statm``) after the warm-up, at the end and every tenth of the
way. Growth that goes on after the warm-up is a leak.

A question costs its prompt's prefill, about 1.5 s for a 250-token RAG prompt on one
slow core, against tens of milliseconds when the generator reuses the K/V of the same
prompt asked before. So each question is asked ``repeat`` times in a row: every ask
still retrieves, builds and tokenizes its prompt, generates and makes its answer, and
one in ``repeat`` also prefills a whole new prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from engine._memory import resident_bytes
from engine.robustness.child import run_once

_MIB = 1 << 20
#: Distinct questions asked in turn.
QUESTIONS = 5


@dataclass(frozen=True)
class MemoryReport:
    """What ``rss_over_asks`` measured.

    Attributes:
        asks: questions asked after the warm-up.
        warmup_asks: questions asked before the first measure.
        seconds: time of the measured asks.
        rss_after_warmup_mib, rss_end_mib: resident set, in MiB.
        growth_mib: ``rss_end_mib - rss_after_warmup_mib``.
        samples_mib: the resident set every tenth of the measured asks.
        fault: what went wrong (empty when nothing did).
    """

    asks: int
    warmup_asks: int
    seconds: float
    rss_after_warmup_mib: float
    rss_end_mib: float
    growth_mib: float
    samples_mib: tuple[float, ...]
    fault: str = ""


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    return resident_bytes() / _MIB


def rss_over_asks(kb_dir: Path, *, asks: int = 1000, seconds: float = 120.0, warmup_asks: int = 40,
                  repeat: int = 100, max_tokens: int = 2, model_path: Path | None = None,
                  cache_dir: str | Path | None = None) -> MemoryReport:
    """Ask ``asks`` questions (fewer if ``seconds`` run out) after ``warmup_asks``; see the module docstring.

    Args:
        kb_dir: a knowledge base (``concurrency.build_qa_kb``).
        repeat: times each question is asked in a row.
        max_tokens: most tokens of an answer.
        model_path: the GGUF model (None: the default generator from the model cache).
        cache_dir: model cache holding the embedder (None: the default cache).
    """
    report, exit_code = run_once(_measure, (str(kb_dir), None if model_path is None else str(model_path),
                                            None if cache_dir is None else str(cache_dir), asks, seconds, warmup_asks,
                                            repeat, max_tokens), timeout_s=seconds + 600)
    if report is None:
        return MemoryReport(0, 0, 0.0, 0.0, 0.0, 0.0, (), f"the child process ended with exit code {exit_code}")
    return MemoryReport(**report)


def _measure(kb_dir: str, model_path: str | None, cache_dir: str | None, asks: int, seconds: float,
             warmup_asks: int, repeat: int, max_tokens: int, connection) -> None:
    from engine.embedding.embedder import Embedder
    from engine.facade import Engine
    from engine.kb import KnowledgeBase
    from engine.robustness.concurrency import QA_K, qa_questions

    kb = KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir, threads=1))
    try:
        with Engine(model_path, kb=kb, n_ctx=1024, n_threads=1, k=QA_K) as engine:
            questions = qa_questions(kb)[::7][:QUESTIONS]
            for n in range(warmup_asks):  # every question once, then the pattern of the measure
                engine.ask(questions[n if n < len(questions) else n // repeat % len(questions)], max_tokens=max_tokens)
            start_mib = rss_mib()
            samples = []
            started = time.monotonic()
            done = 0
            while done < asks and (time.monotonic() - started < seconds or done == 0):
                engine.ask(questions[(warmup_asks + done) // repeat % len(questions)], max_tokens=max_tokens)
                done += 1
                if done % max(1, asks // 10) == 0:
                    samples.append(round(rss_mib(), 2))
            elapsed = time.monotonic() - started
        end_mib = rss_mib()
        connection.send({"asks": done, "warmup_asks": warmup_asks, "seconds": elapsed,
                         "rss_after_warmup_mib": start_mib, "rss_end_mib": end_mib,
                         "growth_mib": end_mib - start_mib, "samples_mib": tuple(samples)})
    except Exception as error:  # noqa: BLE001 - reported to the parent
        connection.send({"asks": 0, "warmup_asks": warmup_asks, "seconds": 0.0, "rss_after_warmup_mib": 0.0,
                         "rss_end_mib": 0.0, "growth_mib": 0.0, "samples_mib": (),
                         "fault": f"{type(error).__name__}: {error}"[:500]})
