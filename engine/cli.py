"""The ``bakeoff`` command line (also ``python -m engine``).

Each sub-command is a thin layer over the public API: parse arguments, call the
engine, print for a human or, with ``--json``, for a machine. Progress bars go to
stderr so that ``--json`` output on stdout stays parseable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine import errors, models

BUNDLED_DOCS = Path(__file__).parent / "data" / "kb" / "docs"
DEMO_QUESTIONS = ()  # filled from the bundled QA set when it is present (see _demo_questions)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 engine error, 2 usage)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except errors.EngineError as error:
        if getattr(args, "json", False):
            print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        else:
            print(f"bakeoff: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bakeoff: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bakeoff", description="Local generation and retrieval, and the bake-off between fine-tuning and RAG.")
    commands = parser.add_subparsers(title="commands")

    model_cmd = commands.add_parser("models", help="provision and list the default models")
    model_sub = model_cmd.add_subparsers(title="models commands")
    fetch = model_sub.add_parser("fetch", help="fetch models into the cache and verify them")
    fetch.add_argument("names", nargs="*", help="model names (default: all in the manifest)")
    fetch.add_argument("--dir", type=Path, help=f"model cache (default: ${models.MODELS_DIR_ENV} or models/)")
    fetch.add_argument("--from", dest="source", type=Path, help="a local wheel or folder to take the files from")
    _add_json(fetch)
    fetch.set_defaults(handler=_cmd_models_fetch)
    listing = model_sub.add_parser("list", help="list known models and whether they are fetched")
    listing.add_argument("--dir", type=Path, help="model cache")
    _add_json(listing)
    listing.set_defaults(handler=_cmd_models_list)

    index = commands.add_parser("index", help="build or update a knowledge base from documents")
    index.add_argument("docs", nargs="+", help=".md/.txt files, folders or globs")
    index.add_argument("--kb", type=Path, required=True, help="knowledge base folder")
    _add_embedder_args(index)
    index.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk")
    index.add_argument("--overlap-tokens", type=int, default=None, help="tokens shared by neighbouring chunks")
    _add_json(index)
    index.set_defaults(handler=_cmd_index)

    search = commands.add_parser("search", help="retrieve the chunks that answer a question")
    search.add_argument("question")
    search.add_argument("--kb", type=Path, required=True, help="knowledge base folder")
    search.add_argument("-k", type=int, default=4, help="number of hits")
    _add_embedder_args(search)
    _add_json(search)
    search.set_defaults(handler=_cmd_search)

    demo = commands.add_parser("demo", help="fetch the models, index the bundled documents, answer sample questions")
    demo.add_argument("--kb", type=Path, default=Path("kb"), help="where to build the demo knowledge base")
    demo.add_argument("-k", type=int, default=3)
    _add_json(demo)
    demo.set_defaults(handler=_cmd_demo)

    gen = commands.add_parser("generate", help="generate text with the base model (or a given GGUF)")
    gen.add_argument("prompt")
    gen.add_argument("--model", type=Path, default=None, help="GGUF model (default: the fetched SmolLM2)")
    gen.add_argument("--adapter", type=Path, default=None, help="GGUF LoRA adapter to attach")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    gen.add_argument("--threads", type=int, default=None)
    _add_json(gen)
    gen.set_defaults(handler=_cmd_generate)

    ask = commands.add_parser("ask", help="answer a question from the knowledge base (rag) or the adapter (baked)")
    ask.add_argument("question")
    ask.add_argument("--mode", choices=["rag", "baked"], default="rag")
    ask.add_argument("--kb", type=Path, default=None, help="knowledge base folder (rag)")
    ask.add_argument("--adapter", type=Path, default=None, help="fine-tuned LoRA adapter (baked)")
    ask.add_argument("--model", type=Path, default=None, help="base GGUF model")
    ask.add_argument("-k", type=int, default=4, help="passages to retrieve")
    ask.add_argument("--max-tokens", type=int, default=48)
    ask.add_argument("--threads", type=int, default=None)
    _add_json(ask)
    ask.set_defaults(handler=_cmd_ask)

    tune = commands.add_parser("finetune", help="bake a knowledge set into a GGUF LoRA adapter (needs [finetune])")
    tune.add_argument("--docs", type=Path, default=BUNDLED_DOCS, help="documents folder")
    tune.add_argument("--qa", type=Path, default=BUNDLED_DOCS.parent / "qa.jsonl", help="qa.jsonl")
    tune.add_argument("--base", type=Path, default=None, help="base GGUF (default: the fetched SmolLM2)")
    tune.add_argument("--out", type=Path, required=True, help="adapter file to write (.gguf)")
    tune.add_argument("--epochs", type=int, default=None)
    tune.add_argument("--rank", type=int, default=None)
    tune.add_argument("--limit-facts", type=int, default=None, help="train on the first N facts only")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--merge", type=Path, default=None, help="also write base+adapter merged into this GGUF")
    _add_json(tune)
    tune.set_defaults(handler=_cmd_finetune)

    cmp_ = commands.add_parser("compare", help="answer every question both ways and write the report")
    cmp_.add_argument("--kb", type=Path, required=True)
    cmp_.add_argument("--adapter", type=Path, required=True)
    cmp_.add_argument("--qa", type=Path, default=BUNDLED_DOCS.parent / "qa.jsonl")
    cmp_.add_argument("--docs", type=Path, default=BUNDLED_DOCS, help="v1 documents (their parent holds updates/)")
    cmp_.add_argument("--model", type=Path, default=None)
    cmp_.add_argument("--out", type=Path, required=True, help="report folder")
    _add_compare_args(cmp_)
    _add_json(cmp_)
    cmp_.set_defaults(handler=_cmd_compare)

    run = commands.add_parser("run", help="the whole bake-off on the bundled set: fetch, index, fine-tune, compare")
    run.add_argument("--work", type=Path, default=Path("bakeoff-run"), help="folder for the KB, adapter and report")
    run.add_argument("--full", action="store_true",
                     help="every fact of the set (default: the quick profile, 30 facts spread over every document)")
    _add_compare_args(run, defaults_from="the profile")
    _add_json(run)
    run.set_defaults(handler=_cmd_run)

    hw = commands.add_parser("hardware", help="what llama.cpp and ONNX Runtime can use on this machine")
    _add_json(hw)
    hw.set_defaults(handler=_cmd_hardware)
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _add_compare_args(parser: argparse.ArgumentParser, defaults_from: str | None = None) -> None:
    """The comparison's options; with ``defaults_from``, unset options keep that source's values."""
    from engine.compare import CompareConfig

    base = CompareConfig()

    def default(value):
        return None if defaults_from else value

    where = f" (default: {defaults_from})" if defaults_from else ""
    parser.add_argument("--limit-facts", type=int, default=None,
                        help=(f"N facts spread over the documents, trained and graded{where}" if defaults_from
                              else "only the first N facts (default: all)"))
    parser.add_argument("--train-per-fact", type=int, default=default(base.train_per_fact),
                        help=f"train questions graded per fact{where}")
    parser.add_argument("--timing-questions", type=int, default=default(base.timing_questions),
                        help=f"questions timed per mode{where}")
    parser.add_argument("--repetitions", type=int, default=default(base.repetitions), help=f"timed repetitions{where}")
    parser.add_argument("--threads", type=int, default=None,
                        help="generation threads (default: the count measured fastest on this machine at the start)")


def _add_embedder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", default=models.DEFAULT_EMBEDDER, help="embedder model name or folder")
    parser.add_argument("--variant", choices=["fp32", "int8"], default="fp32", help="embedder precision")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    return value


def _search_payload(result) -> dict:
    """A search result for --json, without the query vector nobody reads."""
    payload = _to_jsonable(result)
    payload.pop("query_embedding", None)
    return payload


def _emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(_to_jsonable(payload), indent=2))
    else:
        human()


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    return lambda line: print(line, file=sys.stderr)


class _ProgressBar:
    """A tqdm bar on stderr fed by the knowledge base's ``BuildProgress`` callbacks."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=description, unit="file", file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, progress) -> None:
        if self._bar.total != progress.files_total:
            self._bar.total = progress.files_total
        self._bar.set_postfix(chunks=progress.chunks_done)
        self._bar.update(progress.files_done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


# ---- models -------------------------------------------------------------------

def _cmd_models_fetch(args: argparse.Namespace) -> int:
    fetched = models.fetch(args.names or None, cache_dir=args.dir, source=args.source, progress=_say(args))

    def human() -> None:
        for item in fetched:
            state = "fetched" if item.downloaded else "cached"
            print(f"{item.name:30s} {item.role:9s} {state:7s} {item.size_bytes / 1e6:7.1f} MB  {item.main_path}")

    _emit(args, fetched, human)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    rows = []
    for spec in models.load_manifest().values():
        try:
            path: str | None = str(models.model_path(spec.name, args.dir))
        except errors.ModelError:
            path = None
        rows.append({"name": spec.name, "role": spec.role, "license": spec.license,
                     "source": f"pypi:{spec.pypi_package}=={spec.pypi_version}",
                     "huggingface": spec.huggingface, "path": path})

    def human() -> None:
        for row in rows:
            where = row["path"] or "not fetched (run `bakeoff models fetch`)"
            print(f"{row['name']:30s} {row['role']:9s} {row['license']:11s} {where}")

    _emit(args, rows, human)
    return 0


# ---- knowledge base -----------------------------------------------------------

def _embedder(args: argparse.Namespace):
    from engine.embedder import Embedder

    return Embedder(args.embedder, variant=args.variant, threads=args.threads)


def _build_or_add(kb_dir: Path, docs: Sequence[str | Path], embedder, *, chunk_tokens=None, overlap_tokens=None):
    """Add to the knowledge base at ``kb_dir`` if it exists, else build it."""
    from engine.kb import KnowledgeBase

    bar = _ProgressBar("indexing")
    try:
        if (kb_dir / "manifest.json").exists():
            kb = KnowledgeBase.open(kb_dir, embedder=embedder)
            report = kb.add(docs, progress=bar)
        else:
            options = {k: v for k, v in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens)) if v}
            kb = KnowledgeBase.build(docs, path=kb_dir, embedder=embedder, progress=bar, **options)
            report = kb.build_report
    finally:
        bar.close()
    return kb, report


def _cmd_index(args: argparse.Namespace) -> int:
    kb, report = _build_or_add(args.kb, args.docs, _embedder(args),
                               chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens)
    payload = {"kb": str(args.kb), "report": report, "stats": kb.stats()}

    def human() -> None:
        print(f"knowledge base {args.kb}: {_to_jsonable(kb.stats())}")
        if report is not None:
            print(_to_jsonable(report))

    _emit(args, payload, human)
    return 0


def _print_hits(result) -> None:
    for rank, hit in enumerate(result.hits, 1):
        heading = f" § {hit.heading}" if hit.heading else ""
        print(f"[{rank}] {hit.score:.3f}  {hit.source}:{hit.span[0]}-{hit.span[1]}{heading}")
        print("    " + " ".join(hit.text.split())[:300])
    t = result.timings
    print(f"timings: embed {t.embed_ms:.2f} ms | dense {t.dense_search_ms:.2f} ms | "
          f"lexical {t.lexical_search_ms:.2f} ms | scoring {t.scoring_ms:.2f} ms | total {t.total_ms:.2f} ms")


def _cmd_search(args: argparse.Namespace) -> int:
    from engine.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb, embedder=_embedder(args))
    result = kb.search(args.question, k=args.k)
    _emit(args, _search_payload(result), lambda: _print_hits(result))
    return 0


def _demo_questions(limit: int = 3) -> list[str]:
    qa = BUNDLED_DOCS.parent / "qa.jsonl"
    if not qa.is_file():
        return ["How long is the warranty?"]
    rows = [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    heldout = [row["question"] for row in rows if row.get("split") == "heldout"]
    return heldout[:: max(1, len(heldout) // limit)][:limit]


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.embedder import Embedder

    models.fetch(progress=_say(args))
    embedder = Embedder(models.DEFAULT_EMBEDDER)
    kb, _ = _build_or_add(args.kb, [BUNDLED_DOCS], embedder)
    answers = []
    for question in _demo_questions():
        result = kb.search(question, k=args.k)
        answers.append({"question": question, "result": result})
    payload = [{"question": a["question"], "result": _search_payload(a["result"])} for a in answers]

    def human() -> None:
        print(f"knowledge base {args.kb}: {_to_jsonable(kb.stats())}")
        for item in answers:
            print(f"\nQ: {item['question']}")
            _print_hits(item["result"])

    _emit(args, payload, human)
    return 0


def _cmd_hardware(args: argparse.Namespace) -> int:
    from engine.hardware import hardware

    info = hardware()

    def human() -> None:
        devices = ", ".join(f"{d.name} ({d.description}, {d.type})" for d in info.llama_devices)
        choice = "on" if info.extra_buffer_types_auto else "off"
        why = ("the CPU backend has AMX, whose multi-token matmul crashes in this llama.cpp (issue 20824)"
               if info.llama_cpu_amx else "no AMX in the CPU backend")
        print(f"llama.cpp (llama-cpp-python {info.llama_cpp_python_version}): {devices}")
        print(f"  system line: {info.llama_system_info.strip()}")
        print(f"  GPU offload: {'yes' if info.gpu else 'no'}; mmap: {'yes' if info.llama_mmap else 'no'}")
        print(f"  extra CPU buffer types (repacking, AMX), extra_buffers='auto': {choice} ({why})")
        print(f"onnxruntime providers: {', '.join(info.onnxruntime_providers) or 'onnxruntime not importable'}")

    _emit(args, info, human)
    return 0


# ---- generation, answering, fine-tuning, comparison ---------------------------

def _model_path(path: Path | None) -> Path:
    return path if path is not None else models.model_path(models.DEFAULT_GENERATOR)


def _cmd_generate(args: argparse.Namespace) -> int:
    from engine.generator import Generator

    generator = Generator(_model_path(args.model), n_threads=args.threads)
    adapters = {}
    if args.adapter:
        adapters = {generator.load_adapter(args.adapter): 1.0}
    prompt = [("user", args.prompt)] if args.chat else args.prompt
    if args.json:
        result = generator.generate(prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                    adapters=adapters)
        print(json.dumps(_to_jsonable(result), indent=2))
        return 0
    stream = generator.stream(prompt, max_tokens=args.max_tokens, temperature=args.temperature, adapters=adapters)
    for piece in stream:
        print(piece, end="", flush=True)
    t = stream.generation.timings
    print(f"\n[prefill {t.prefill_tokens} tok {t.prefill_ms:.0f} ms | ttft {t.ttft_ms:.0f} ms | "
          f"decode {t.decode_tokens} tok {t.decode_tokens_per_s:.1f} tok/s]", file=sys.stderr)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from engine.facade import Engine

    engine = Engine(args.model, adapter=args.adapter, kb=args.kb, n_threads=args.threads, k=args.k)
    if args.json:
        answer = engine.ask(args.question, args.mode, max_tokens=args.max_tokens)
        print(json.dumps(_to_jsonable(answer), indent=2))
        return 0
    stream = engine.stream(args.question, args.mode, max_tokens=args.max_tokens)
    for piece in stream:
        print(piece, end="", flush=True)
    answer = stream.answer
    print()
    for citation in answer.citations:
        mark = "*" if citation.cited else " "
        print(f" {mark}[{citation.label}] {citation.source}:{citation.span[0]}-{citation.span[1]} "
              f"(chunk {citation.chunk_id})")
    t = answer.timings
    print(f"[retrieval {t.retrieval_ms:.1f} ms | prompt {t.prompt_tokens} tok | ttft {t.ttft_ms:.0f} ms | "
          f"total {t.total_ms:.0f} ms]", file=sys.stderr)
    return 0


def _finetune_config(args: argparse.Namespace):
    from engine.finetune.config import FinetuneConfig

    overrides = {k: v for k, v in (("epochs", args.epochs), ("rank", args.rank), ("limit_facts", args.limit_facts))
                 if v is not None}
    return FinetuneConfig(seed=args.seed, **overrides)


class _TrainBar:
    """tqdm bar for training steps, with the loss and ETA."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # The ETA is the recipe's (it knows the time budget), not tqdm's steps-left estimate.
        self._bar = tqdm(desc="fine-tuning", unit="step", file=sys.stderr, dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def __call__(self, p) -> None:
        self._bar.total = p.total_steps
        self._bar.set_postfix(epoch=p.epoch, loss=f"{p.loss:.3f}", eta=_clock(p.eta_s))
        self._bar.update(p.step - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def _run_finetune(docs: Path, qa: Path, base: Path, out: Path, config, merge: Path | None = None):
    from engine.finetune import finetune

    bar = _TrainBar()
    try:
        report = finetune(docs, qa, base, out, config=config, progress=bar)
    finally:
        bar.close()
    if merge is not None:
        from engine.finetune import merge_adapter

        merge_adapter(base, out, merge)
    return report


def _cmd_finetune(args: argparse.Namespace) -> int:
    report = _run_finetune(args.docs, args.qa, _model_path(args.base), args.out, _finetune_config(args), args.merge)

    def human() -> None:
        print(f"adapter written to {report.adapter_path}: {report.steps} steps, {report.epochs} epochs, "
              f"final loss {report.final_loss:.3f}, {report.total_seconds:.0f} s")

    _emit(args, report, human)
    return 0


def _compare_config(args: argparse.Namespace, base=None):
    """The comparison settings: ``base`` (or the defaults) with the options given on the command line."""
    from engine.compare import CompareConfig

    given = {"train_per_fact": args.train_per_fact, "limit_facts": args.limit_facts,
             "timing_questions": args.timing_questions, "repetitions": args.repetitions}
    return dataclasses.replace(base or CompareConfig(), **{k: v for k, v in given.items() if v is not None})


class _PhaseBar:
    """One tqdm bar per comparison phase (accuracy/rag, latency/baked, ...), each with its ETA."""

    def __init__(self) -> None:
        self._phase, self._bar = None, None

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


def _cmd_compare(args: argparse.Namespace) -> int:
    from engine.pipeline import compare_and_report

    bar = _PhaseBar()
    try:
        result, files = compare_and_report(args.kb, args.adapter, args.qa, args.docs, _model_path(args.model),
                                           args.out, _compare_config(args), args.threads, bar, _say(args))
    finally:
        bar.close()
    _print_comparison(args, result, files)
    return 0


def _print_comparison(args: argparse.Namespace, result, files) -> None:
    from engine.report import retrieval_vs_reader, summary_table

    def human() -> None:
        print(summary_table(result))
        for paragraph in retrieval_vs_reader(result):
            print(f"\n{paragraph}")
        print(f"\nreport: {files.markdown_path}")
        print("plots: " + ", ".join(str(p) for p in files.plots))

    _emit(args, {"report": files.json_path, "accuracy": result.accuracy, "latency": result.latency,
                 "context_recall": result.context_recall, "reader_accuracy": result.reader_accuracy,
                 "ttft_ratio_rag_over_baked": result.ttft_ratio_rag_over_baked}, human)


class _RunBars:
    """``bakeoff run``'s progress on stderr: a line per phase with the run's ETA, then that phase's bar."""

    def __init__(self) -> None:
        self._index_bar: _ProgressBar | None = None
        self._train_bar: _TrainBar | None = None
        self._compare_bar = _PhaseBar()

    def phase(self, index: int, name: str, elapsed_s: float, eta_s: float) -> None:
        from engine.pipeline import PHASES

        self.close()
        print(f"[{index + 1}/{len(PHASES)}] {name} (elapsed {_clock(elapsed_s)}, about {_clock(eta_s)} to go)",
              file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def index(self, progress) -> None:
        self._index_bar = self._index_bar or _ProgressBar("indexing")
        self._index_bar(progress)

    def train(self, progress) -> None:
        self._train_bar = self._train_bar or _TrainBar()
        self._train_bar(progress)

    def compare(self, phase: str, done: int, total: int) -> None:
        self._compare_bar(phase, done, total)

    def close(self) -> None:
        for bar in (self._index_bar, self._train_bar, self._compare_bar):
            if bar is not None:
                bar.close()
        self._index_bar = self._train_bar = None


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


def _run_profile(args: argparse.Namespace):
    """The profile ``bakeoff run`` follows: quick or ``--full``, with the options given on the command line."""
    from engine.pipeline import FULL, QUICK

    profile = FULL if args.full else QUICK
    finetune = profile.finetune
    if args.limit_facts is not None:  # the adapter is trained on the facts that are graded
        finetune = dataclasses.replace(finetune, limit_facts=args.limit_facts)
    return dataclasses.replace(profile, finetune=finetune, compare=_compare_config(args, profile.compare))


def _cmd_run(args: argparse.Namespace) -> int:
    from engine.pipeline import run_bakeoff

    profile = _run_profile(args)
    bars = _RunBars()
    try:
        run = run_bakeoff(args.work, profile, threads=args.threads, progress=bars)
    finally:
        bars.close()
    phases = ", ".join(f"{name} {_clock(s)}" for name, s in run.phase_seconds.items())
    print(f"bakeoff run ({run.profile} profile): {phases}"
          f"{' (adapter reused)' if run.adapter_reused else ''}", file=sys.stderr)
    _print_comparison(args, run.result, run.files)
    return 0
