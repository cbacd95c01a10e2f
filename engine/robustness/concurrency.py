"""Searching, writing and asking at once: many threads on one ``KnowledgeBase`` and one ``Engine``.

``search_write_ask`` runs in a child process (a crash is then an exit by a signal,
not the end of the caller) for ``seconds``: ``searchers`` threads search the knowledge
base with random questions, one thread adds and removes a document, and one thread asks
an ``Engine`` (rag mode) over the same ``KnowledgeBase`` object. Any exception in any
thread is a fault, and so is an answer that differs from the single-threaded one.

Comparing answers: decoding is greedy, but the generator reuses the K/V of the prefix
a prompt shares with the one before it, and the tokens after that prefix are then
computed in another batch, whose float rounding can tip a near-tie
(``Generator.generate``, ``reuse_prefix``). So the asker alternates two questions, and
the reference answers are the second of two rounds asked single-threaded before the
run: every answer then follows the same previous prompt as its reference, and is
computed the same way. The two questions are chosen so that their passages are the
same with the writer's document in the knowledge base and without it (checked before
the run); every answer must then equal its reference, text for text. Whether the first
and second rounds agreed is reported (``reference_reuse_stable``).
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from engine.robustness.child import run_once

#: Bundled documents of the knowledge base that ``build_qa_kb`` builds (the bundled set's questions ask about them).
QA_DOCUMENTS = ("warranty-terms.md", "company-overview.md", "office-locations.md", "brookling-b3-manual.md")
#: Chunking and retrieval that keep a RAG prompt near 250 tokens.
QA_CHUNK_TOKENS = 64
QA_K = 2
#: The document the writer adds and removes: no topic of the bundled set.
EXTRA_DOCUMENT = """# Beekeeping notes

## Spring inspection

Open the hive on a warm, still afternoon. Check the brood frames for eggs and capped cells,
and look for queen cups along the lower edge of the comb.

## Swarm control

Give the colony a second super before the clover flowers. A crowded brood box makes the
bees raise new queens, and half of the colony leaves with the old one.
"""


@dataclass(frozen=True)
class ConcurrencyReport:
    """What ``search_write_ask`` found.

    Attributes:
        threads: threads running at once (searchers, the writer, the asker).
        seconds: how long they ran.
        searches, writes, asks: calls made (a write is one add or one remove).
        answers_differing: answers unlike the single-threaded answer to the same question.
        questions: what the asker asked.
        reference_reuse_stable: the two single-threaded rounds gave the same answers.
        faults: exceptions, differing answers and crashes, one line each.
        thread_seconds_without_fault: ``threads * seconds`` when nothing failed, else 0.
    """

    threads: int
    seconds: float
    searches: int
    writes: int
    asks: int
    answers_differing: int
    questions: tuple[str, ...]
    reference_reuse_stable: bool
    faults: tuple[str, ...]
    thread_seconds_without_fault: float


def build_qa_kb(into: Path, embedder) -> Path:
    """Build the knowledge base the asker and the memory measure use: ``QA_DOCUMENTS``, 64-token chunks."""
    from engine.kb import KnowledgeBase
    from engine.questions.qa import BUNDLED_SET

    documents = [BUNDLED_SET / "docs" / name for name in QA_DOCUMENTS]
    KnowledgeBase.build(documents, into, embedder=embedder, chunk_tokens=QA_CHUNK_TOKENS, overlap_tokens=8).close()
    return into


def qa_questions(kb) -> list[str]:
    """The bundled set's questions about the documents of ``kb``, in the set's order."""
    from engine.questions.qa import BUNDLED_SET, load_questions

    names = {Path(source).name for source in kb.sources()}
    return [q.question for q in load_questions(BUNDLED_SET / "qa.jsonl") if Path(q.source).name in names]


def search_write_ask(kb_dir: Path, extra: Path, *, seconds: float, searchers: int = 8, max_tokens: int = 16,
                     model_path: Path | None = None, cache_dir: str | Path | None = None) -> ConcurrencyReport:
    """Run the threads in a child process for ``seconds`` (see the module docstring).

    Args:
        kb_dir: a knowledge base (``build_qa_kb``); ``extra`` is added and removed, and removed at the end.
        extra: a document to add and remove (``EXTRA_DOCUMENT``), not in the knowledge base.
        searchers: searching threads.
        max_tokens: most tokens of an answer.
        model_path: the GGUF model (None: the default generator from the model cache).
        cache_dir: model cache holding the embedder (None: the default cache).
    """
    report, exit_code = run_once(_run, (str(kb_dir), str(extra), None if model_path is None else str(model_path),
                                        None if cache_dir is None else str(cache_dir), seconds, searchers, max_tokens),
                                 timeout_s=seconds + 600)
    if report is None or exit_code != 0:
        fault = f"the child process ended with exit code {exit_code}" + ("" if report else " and no report")
        return ConcurrencyReport(searchers + 2, seconds, 0, 0, 0, 0, (), False, (fault,), 0.0)
    return ConcurrencyReport(**report)


def _run(kb_dir: str, extra: str, model_path: str | None, cache_dir: str | None, seconds: float, searchers: int,
         max_tokens: int, connection) -> None:
    """The child process: set up, check the questions, take the references, run the threads, report."""
    from engine.embedding.embedder import Embedder
    from engine.facade import Engine
    from engine.kb import KnowledgeBase

    extra = str(Path(extra).resolve())
    kb = KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir, threads=1))
    engine = Engine(model_path, kb=kb, n_ctx=1024, n_threads=1, k=QA_K)
    candidates = qa_questions(kb)
    questions = _untouched(kb, engine, candidates[:60], extra)
    first = [engine.ask(q, max_tokens=max_tokens).text for q in questions]
    reference = [engine.ask(q, max_tokens=max_tokens).text for q in questions]
    counts = {"searches": 0, "writes": 0, "asks": 0, "differing": 0}
    counting = threading.Lock()
    faults: list[str] = []
    if len(questions) < 2:
        faults.append(f"fewer than two questions keep their passages when {extra} is added")
    stop = threading.Event()

    def guarded(body, name: str):
        def run() -> None:
            done = 0
            try:
                done = body()
            except BaseException:  # noqa: BLE001 - every exception is a fault this reports
                faults.append(traceback.format_exc()[-1500:])
            with counting:
                counts[name] += done
        return run

    def search(seed: int) -> int:
        rng = random.Random(seed)
        done = 0
        while not stop.is_set():
            kb.search(rng.choice(candidates), k=rng.choice((2, 5)), mmr_lambda=rng.choice((0.5, 1.0)))
            done += 1
        return done

    def write() -> int:
        done = 0
        while not stop.is_set():
            kb.add([extra])
            kb.remove(extra)
            done += 2
        return done

    def ask() -> int:
        done = 0
        while not stop.is_set() and len(questions) == 2:
            question, expected = questions[done % 2], reference[done % 2]
            answer = engine.ask(question, max_tokens=max_tokens)
            if answer.text != expected:
                with counting:
                    counts["differing"] += 1
                faults.append(f"{question!r}: {answer.text!r}, single-threaded {expected!r}")
            done += 1
        return done

    threads = [threading.Thread(target=guarded(lambda s=s: search(s), "searches")) for s in range(searchers)]
    threads += [threading.Thread(target=guarded(write, "writes")), threading.Thread(target=guarded(ask, "asks"))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    ran_s = time.monotonic() - started
    if extra in kb.sources():
        kb.remove(extra)
    engine.close()
    connection.send({
        "threads": len(threads), "seconds": ran_s, "searches": counts["searches"], "writes": counts["writes"],
        "asks": counts["asks"], "answers_differing": counts["differing"], "questions": tuple(questions),
        "reference_reuse_stable": first == reference, "faults": tuple(faults[:20]),
        "thread_seconds_without_fault": 0.0 if faults else len(threads) * ran_s})


def _untouched(kb, engine, candidates: list[str], extra: str) -> list[str]:
    """Two questions whose retrieved chunks are the same with ``extra`` in the knowledge base and
    without, and differ from each other (so that the asker's prompts differ); fewer if none are found."""
    def passages() -> list[tuple[int, ...]]:
        return [tuple(h.chunk_id for h in engine.retrieve(q, kb=kb).hits)
                for q in candidates]

    without = passages()
    kb.add([extra])
    with_extra = passages()
    kb.remove(extra)
    again = passages()
    stable = [(q, a) for q, a, b, c in zip(candidates, without, with_extra, again, strict=True) if a == b == c]
    if not stable:
        return []
    first_question, first_passages = stable[0]
    others = [q for q, found in stable if found != first_passages]
    return [first_question, *others[:1]]
