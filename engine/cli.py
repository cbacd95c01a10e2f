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
    parser = argparse.ArgumentParser(prog="bakeoff", description=__doc__.splitlines()[0])
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

    hw = commands.add_parser("hardware", help="what llama.cpp and ONNX Runtime can use on this machine")
    _add_json(hw)
    hw.set_defaults(handler=_cmd_hardware)
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


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
    return value


def _emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(_to_jsonable(payload), indent=2))
    else:
        human()


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    return lambda line: print(line, file=sys.stderr)


class _ProgressBar:
    """A tqdm bar on stderr fed by the engine's ``progress(done, total)`` callbacks."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=description, unit="chunk", file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

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

    bar = _ProgressBar("embedding")
    try:
        if (kb_dir / "manifest.json").exists():
            kb = KnowledgeBase.open(kb_dir, embedder=embedder)
            report = kb.add(docs, progress=bar)
        else:
            options = {k: v for k, v in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens)) if v}
            kb = KnowledgeBase.build(docs, path=kb_dir, embedder=embedder, progress=bar, **options)
            report = kb.last_report if hasattr(kb, "last_report") else None
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
    _emit(args, result, lambda: _print_hits(result))
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

    def human() -> None:
        print(f"knowledge base {args.kb}: {_to_jsonable(kb.stats())}")
        for item in answers:
            print(f"\nQ: {item['question']}")
            _print_hits(item["result"])

    _emit(args, answers, human)
    return 0


def _cmd_hardware(args: argparse.Namespace) -> int:
    from engine.hardware import hardware

    info = hardware()
    _emit(args, info, lambda: print(json.dumps(_to_jsonable(info), indent=2)))
    return 0
