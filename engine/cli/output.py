"""What the ``bakeoff`` command prints: JSON for machines, lines and tables for people, bars on stderr.

Every function here takes results the engine already computed and only formats
them; nothing here loads a model or touches a file. Progress bars go to stderr so
that ``--json`` output on stdout stays parseable.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.bakeoff.pipeline import RunProgress

# ---- JSON ----------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON types: dataclasses as objects, paths as strings, NumPy values as lists/numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    return value


def emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    """Print ``payload`` as JSON on stdout when ``as_json``, else call ``human`` to print for a person."""
    if as_json:
        print(json.dumps(to_jsonable(payload), indent=2))
    else:
        human()


def error(command: str | None, as_json: bool, kind: str, message: str) -> None:
    """An error: a JSON object on stdout with ``--json``, else one line on stderr."""
    if as_json:
        print(json.dumps({"error": kind, "message": message}))
    else:
        where = f"bakeoff {command}" if command else "bakeoff"
        print(f"{where}: {kind}: {message}", file=sys.stderr)


def say(line: str) -> None:
    """A progress line for the user, on stderr."""
    print(line, file=sys.stderr, flush=True)


def search_payload(result) -> dict:
    """A search result for ``--json``, without the query vector nobody reads."""
    payload = to_jsonable(result)
    payload.pop("query_embedding", None)
    return payload


# ---- lines for people ------------------------------------------------------------


def _snippet(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def print_models(fetched) -> None:
    """``bakeoff models fetch``: one line per model."""
    for item in fetched:
        state = "fetched" if item.downloaded else "cached"
        print(f"{item.name:30s} {item.role:9s} {state:7s} {item.size_bytes / 1e6:7.1f} MB  {item.main_path}")


def print_model_rows(rows: Iterable[dict]) -> None:
    """``bakeoff models list``: one line per known model, and where it is (or how to fetch it)."""
    for row in rows:
        where = row["path"] or "not fetched (run `bakeoff models fetch`)"
        print(f"{row['name']:30s} {row['role']:9s} {row['license']:11s} {where}")


def print_index(kb_dir: Path, stats, report, kv=None) -> None:
    """``bakeoff index``: what the knowledge base holds, and what this run changed."""
    chunking = stats.chunking
    print(f"knowledge base {kb_dir}: {stats.documents} documents, {stats.chunks} chunks ({stats.generation}), "
          f"embedder {stats.embedder_model} {stats.embedder_variant} ({stats.dim} dims), "
          f"chunks of {chunking.chunk_tokens} tokens overlapping {chunking.overlap_tokens}, "
          f"{stats.size_bytes / 1e6:.1f} MB")
    if kv is not None:
        print(f"chunk states: {kv.states} in {kb_dir / 'kv'} ({kv.disk_bytes / 1e6:.0f} MB on disk), "
              f"{kv.stored} computed now, {kv.ram_hits + kv.disk_hits} already there")
    if report is None:
        return
    print(f"added {len(report.added)}, replaced {len(report.replaced)}, unchanged {len(report.unchanged)}, "
          f"removed {len(report.removed)} documents; {report.chunks_added} chunks embedded in {report.elapsed_s:.1f} s")
    for skipped in report.skipped:
        print(f"  skipped {skipped.source}: {skipped.reason}")


def print_hits(result) -> None:
    """``bakeoff search`` and ``demo``: the hits best first, then the stage timings."""
    for rank, hit in enumerate(result.hits, 1):
        heading = f" § {hit.heading}" if hit.heading else ""
        print(f"[{rank}] {hit.score:.3f}  {hit.source}:{hit.span[0]}-{hit.span[1]}{heading}")
        print("    " + _snippet(hit.text))
    t = result.timings
    print(f"timings: embed {t.embed_ms:.2f} ms | dense {t.dense_search_ms:.2f} ms | "
          f"lexical {t.lexical_search_ms:.2f} ms | scoring {t.scoring_ms:.2f} ms | total {t.total_ms:.2f} ms")


def print_generation_timings(timings) -> None:
    """``bakeoff generate``: prefill and decode of the request, on stderr."""
    print(f"\n[prefill {timings.prefill_tokens} tok {timings.prefill_ms:.0f} ms | ttft {timings.ttft_ms:.0f} ms | "
          f"decode {timings.decode_tokens} tok {timings.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)


def print_answer_sources(answer) -> None:
    """``bakeoff ask``: the passages the answer was given (``*`` where it cites one), and its timings."""
    print()
    for citation in answer.citations:
        mark = "*" if citation.cited else " "
        print(f" {mark}[{citation.label}] {citation.source}:{citation.span[0]}-{citation.span[1]} "
              f"(chunk {citation.chunk_id})")
        print("      " + _snippet(citation.text, 160))
    t = answer.timings
    print(f"[retrieval {t.retrieval_ms:.1f} ms | prompt {t.generation.prompt_tokens} tok "
          f"({t.generation.reused_tokens} reused) | ttft {t.ttft_ms:.0f} ms | total {t.total_ms:.0f} ms]",
          file=sys.stderr)


def print_hardware(info) -> None:
    """``bakeoff hardware``: what llama.cpp and ONNX Runtime can use, and what extra_buffers='auto' picks."""
    devices = ", ".join(f"{d.name} ({d.description}, {d.type})" for d in info.llama_devices)
    choice = "on" if info.extra_buffer_types_auto else "off"
    why = ("the CPU backend has AMX, whose multi-token matmul crashes in this llama.cpp (issue 20824)"
           if info.llama_cpu_amx else "no AMX in the CPU backend")
    print(f"llama.cpp (llama-cpp-python {info.llama_cpp_python_version}): {devices}")
    print(f"  system line: {info.llama_system_info.strip()}")
    print(f"  GPU offload: {'yes' if info.gpu else 'no'}; mmap: {'yes' if info.llama_mmap else 'no'}")
    print(f"  extra CPU buffer types (repacking, AMX), extra_buffers='auto': {choice} ({why})")
    print(f"onnxruntime providers: {', '.join(info.onnxruntime_providers) or 'onnxruntime not importable'}")


def print_finetune(report) -> None:
    """``bakeoff finetune``: where the adapter went and how training ended."""
    print(f"adapter written to {report.adapter_path}: {report.steps} steps, {report.epochs} epochs, "
          f"final loss {report.final_loss:.3f}, {report.total_seconds:.0f} s")
    print(f"examples: {report.n_qa_examples} questions alone, {report.n_doc_examples} document windows, "
          f"{report.n_reader_examples} with retrieved passages ({report.n_reader_distractors_only} without the "
          f"answer, {report.n_reader_counterfactual} with a replaced value, {report.n_reader_practice} on facts "
          f"not trained on, {report.n_reader_spliced} as spliced blocks; {report.n_reader_skipped} skipped)")


def comparison_payload(result, files) -> dict:
    """The headline of a comparison for ``--json`` (the whole result is in ``report.json``)."""
    return {"report": files.json_path, "accuracy": result.accuracy, "latency": result.latency,
            "context_recall": result.context_recall, "reader_accuracy": result.reader_accuracy,
            "ttft_ratio_rag_over_baked": result.ttft_ratio_rag_over_baked}


def print_comparison(result, files) -> None:
    """``bakeoff compare`` and ``run``: the summary table, retrieval against reading, where the report is."""
    from engine.bakeoff.report import retrieval_vs_reader, summary_table

    print(summary_table(result))
    for paragraph in retrieval_vs_reader(result):
        print(f"\n{paragraph}")
    print(f"\nreport: {files.markdown_path}")
    print("plots: " + ", ".join(str(p) for p in files.plots))


def print_robustness(report) -> None:
    """``bakeoff robustness``: one line per check, then the first failures of each."""
    kb, gguf, kills, faults, threads, memory = (report.kb_fuzz, report.gguf_fuzz, report.kills, report.write_faults,
                                                report.concurrency, report.memory)
    typed = sum(n for outcome, n in kb.outcomes.items() if outcome.startswith("typed"))
    print(f"knowledge-base fuzz: {kb.cases} cases, {kb.runs} opens: {typed} typed errors, "
          f"{kb.outcomes.get('ok', 0)} searches; {len(kb.failures)} failures")
    if gguf.skipped:
        print(f"GGUF fuzz: skipped, {gguf.skipped}")
    else:
        outcomes = ", ".join(f"{what} {n}" for what, n in gguf.outcomes.items())
        print(f"GGUF fuzz: {gguf.cases} cases ({outcomes}); {len(gguf.failures)} failures")
    print(f"kills: {kills.survived} of {kills.runs} SIGKILLed writes left a whole knowledge base "
          f"({kills.killed_mid_write} killed mid-write; {kills.old_state} old, {kills.new_state} new state; "
          f"{clock(kills.seconds)})")
    errors = ", ".join(f"{name.rsplit('.', 1)[-1]} {n}" for name, n in faults.errors.items()) or "nothing raised"
    print(f"failed writes: {faults.survived} of {faults.runs} left the previous state or finished ({errors}; "
          f"{faults.published_then_raised} raised after publishing)")
    print(f"threads: {threads.threads} x {threads.seconds:.1f} s, {threads.thread_seconds_without_fault:.0f} "
          f"thread-seconds without fault ({threads.searches} searches, {threads.writes} writes, {threads.asks} "
          f"answers, {threads.answers_differing} unlike single-threaded)")
    print(f"memory: {memory.growth_mib:+.2f} MiB over {memory.asks} questions after {memory.warmup_asks} to warm up "
          f"({memory.rss_after_warmup_mib:.1f} -> {memory.rss_end_mib:.1f} MiB){f'; {memory.fault}' if memory.fault else ''}")
    print(f"failures: {report.failures} ({clock(report.elapsed_s)})")
    for name, lines in (("knowledge-base fuzz", kb.failures), ("GGUF fuzz", gguf.failures),
                        ("kills", kills.failures), ("failed writes", faults.failures), ("threads", threads.faults)):
        for line in lines[:3]:
            print(f"  {name}: {line}")


def print_run_phases(run) -> None:
    """``bakeoff run``: how long each phase took, on stderr."""
    phases = ", ".join(f"{name} {clock(s)}" for name, s in run.phase_seconds.items())
    say(f"bakeoff run ({run.profile} profile): {phases}{' (adapter reused)' if run.adapter_reused else ''}")


def clock(seconds: float) -> str:
    """``seconds`` as ``m:ss``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


# ---- progress bars (stderr) -----------------------------------------------------


class IndexBar:
    """A tqdm bar fed by the knowledge base's ``BuildProgress`` callbacks."""

    def __init__(self, description: str = "indexing") -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=description, unit="file", file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, progress) -> None:
        if self._bar.total != progress.files_total:
            self._bar.total = progress.files_total
        self._bar.set_postfix(chunks=progress.chunks_done)
        self._bar.update(progress.files_done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class CountBar:
    """A tqdm bar fed ``(done, total)`` callbacks, with tqdm's ETA."""

    def __init__(self, description: str, unit: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class TrainBar:
    """A tqdm bar for training steps, with the loss and the recipe's ETA."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # The ETA is the recipe's (it knows the time budget), not tqdm's steps-left estimate.
        self._bar = tqdm(desc="fine-tuning", unit="step", file=sys.stderr, dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def __call__(self, p) -> None:
        self._bar.total = p.total_steps
        self._bar.set_postfix(epoch=p.epoch, loss=f"{p.loss:.3f}", eta=clock(p.eta_s))
        self._bar.update(p.step - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class PhaseBar:
    """One tqdm bar per comparison phase (accuracy/rag, latency/baked, ...), each with its ETA."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._bar: Any = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if phase != self._phase:
            self.close()
            self._phase = phase
            self._bar = tqdm(desc=phase, total=total, unit="q", file=sys.stderr, dynamic_ncols=True)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunBars(RunProgress):
    """``bakeoff run``'s progress (a ``RunProgress``): a line per phase with the run's ETA, then its bar."""

    def __init__(self, phases: tuple[str, ...]) -> None:
        self._phases = phases
        self._index_bar: IndexBar | None = None
        self._train_bar: TrainBar | None = None
        self._compare_bar = PhaseBar()

    def phase(self, index: int, name: str, elapsed_s: float, eta_s: float) -> None:
        self.close()
        say(f"[{index + 1}/{len(self._phases)}] {name} (elapsed {clock(elapsed_s)}, about {clock(eta_s)} to go)")

    def message(self, text: str) -> None:
        say(text)

    def index(self, progress) -> None:
        self._index_bar = self._index_bar or IndexBar()
        self._index_bar(progress)

    def train(self, progress) -> None:
        self._train_bar = self._train_bar or TrainBar()
        self._train_bar(progress)

    def compare(self, phase: str, done: int, total: int) -> None:
        self._compare_bar(phase, done, total)

    def close(self) -> None:
        for bar in (self._index_bar, self._train_bar, self._compare_bar):
            if bar is not None:
                bar.close()
        self._index_bar = self._train_bar = None
