"""The ``bakeoff`` sub-commands: each takes the parsed arguments, calls the public API, and prints.

One function per sub-command, named for it; ``engine.cli.main`` declares their arguments
and :mod:`engine.cli.output` formats what they print. The engine's parts are
imported inside each command, so ``bakeoff --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from engine import errors, models
from engine.cli import output as out
from engine.errors import ChunkingMismatchError
from engine.questions.qa import BUNDLED_SET

BUNDLED_DOCS = BUNDLED_SET / "docs"
BUNDLED_QA = BUNDLED_SET / "qa.jsonl"


class UsageError(errors.InputError):
    """A command-line option contradicts what is on disk; the CLI exits with 2, as for any usage error."""


# ---- models -------------------------------------------------------------------------


def models_fetch(args: argparse.Namespace) -> int:
    fetched = models.fetch(args.names or None, cache_dir=args.dir, source=args.source, progress=out.say)
    out.emit(args.json, fetched, lambda: out.print_models(fetched))
    return 0


def models_list(args: argparse.Namespace) -> int:
    rows = []
    for spec in models.load_manifest().values():
        try:
            path: str | None = str(models.model_path(spec.name, args.dir))
        except errors.ModelError:
            path = None
        rows.append({"name": spec.name, "role": spec.role, "license": spec.license,
                     "source": f"pypi:{spec.pypi_package}=={spec.pypi_version}",
                     "huggingface": spec.huggingface, "path": path})
    out.emit(args.json, rows, lambda: out.print_model_rows(rows))
    return 0


# ---- knowledge base -----------------------------------------------------------------


def _embedder(args: argparse.Namespace):
    from engine.embedding.embedder import Embedder

    return Embedder(args.embedder, variant=args.variant, threads=args.threads)


#: The chunking options of ``bakeoff index``, named as the ``ChunkingConfig`` fields they set.
CHUNKING_OPTIONS = ("chunk_tokens", "overlap_tokens")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def index_into(kb_dir: Path, docs: Sequence[str | Path], embedder, *, rebuild: bool = False,
               chunking: dict[str, int | None] | None = None):
    """Build the knowledge base at ``kb_dir`` (new, or ``rebuild``), else add ``docs`` to it.

    ``chunking`` maps ``chunk_tokens``/``overlap_tokens`` to a value or None (not given).
    Returns ``(kb, report)``.

    Raises:
        UsageError: a chunking value differs from the one the existing knowledge base was
            built with (adding never re-chunks what is there).
    """
    from engine.kb import KnowledgeBase

    bar = out.IndexBar()
    try:
        return KnowledgeBase.open_or_build(docs, kb_dir, embedder=embedder, rebuild=rebuild, progress=bar,
                                           chunk_tokens=(chunking or {}).get("chunk_tokens"),
                                           overlap_tokens=(chunking or {}).get("overlap_tokens"))
    except ChunkingMismatchError as clash:
        was = " ".join(f"{_flag(name)} {value}" for name, value in clash.built.items())
        asked = " ".join(f"{_flag(name)} {value}" for name, value in clash.asked.items())
        raise UsageError(f"the knowledge base {kb_dir} was built with {was}, and adding documents keeps "
                         f"its chunking, so {asked} would be ignored: rebuild it with "
                         f"`bakeoff index DOCS... --kb {kb_dir} --rebuild {asked}`, or drop the option") from None
    finally:
        bar.close()


def index(args: argparse.Namespace) -> int:
    chunking = {name: getattr(args, name) for name in CHUNKING_OPTIONS}
    kb, report = index_into(args.kb, args.docs, _embedder(args), rebuild=args.rebuild, chunking=chunking)
    with kb:
        stats = kb.stats()
        kv = _precompute_chunk_states(kb, args.model) if args.kv_cache else None
    payload = {"kb": str(args.kb), "report": report, "stats": stats}
    if kv is not None:
        payload["kv_cache"] = kv
    out.emit(args.json, payload, lambda: out.print_index(args.kb, stats, report, kv))
    return 0


def _precompute_chunk_states(kb, model: Path | None):
    """Fill ``KB/kv`` with the chunk state of every chunk (for ``Engine(kv_cache=True)``)."""
    from engine.facade import Engine

    bar = out.CountBar("chunk states", "chunk")
    try:
        with Engine(model, kb=kb, kv_cache=True) as engine:
            return engine.precompute_chunk_states(bar)
    finally:
        bar.close()


def search(args: argparse.Namespace) -> int:
    from engine.kb import KnowledgeBase

    with KnowledgeBase.open(args.kb, embedder=_embedder(args)) as kb:
        result = kb.search(args.question, k=args.k)
    out.emit(args.json, out.search_payload(result), lambda: out.print_hits(result))
    return 0


def _demo_questions(limit: int = 3) -> list[str]:
    """``limit`` held-out questions of the bundled set, spread over it."""
    from engine.questions.qa import load_questions

    heldout = [q.question for q in load_questions(BUNDLED_QA) if q.split == "heldout"]
    return heldout[:: max(1, len(heldout) // limit)][:limit]


def demo(args: argparse.Namespace) -> int:
    from engine.embedding.embedder import Embedder

    models.fetch(progress=out.say)
    kb, _ = index_into(args.kb, [BUNDLED_DOCS], Embedder(models.DEFAULT_EMBEDDER))
    with kb:
        stats = kb.stats()
        answers = [(question, kb.search(question, k=args.k)) for question in _demo_questions()]

    def human() -> None:
        out.print_index(args.kb, stats, None)
        for question, result in answers:
            print(f"\nQ: {question}")
            out.print_hits(result)

    out.emit(args.json, [{"question": q, "result": out.search_payload(r)} for q, r in answers], human)
    return 0


def hardware(args: argparse.Namespace) -> int:
    from engine.hardware import hardware as probe

    info = probe()
    out.emit(args.json, info, lambda: out.print_hardware(info))
    return 0


# ---- generation, answering, fine-tuning, comparison ---------------------------------


def _model_path(path: Path | None) -> Path:
    return path if path is not None else models.model_path(models.DEFAULT_GENERATOR)


def generate(args: argparse.Namespace) -> int:
    from engine.generation.generator import Generator

    generator = Generator(_model_path(args.model), n_threads=args.threads)
    adapters = {generator.load_adapter(args.adapter): 1.0} if args.adapter else {}
    prompt = [("user", args.prompt)] if args.chat else args.prompt
    if args.json:
        result = generator.generate(prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                    adapters=adapters)
        print(json.dumps(out.to_jsonable(result), indent=2))
        return 0
    stream = generator.stream(prompt, max_tokens=args.max_tokens, temperature=args.temperature, adapters=adapters)
    for piece in stream:
        print(piece, end="", flush=True)
    assert stream.generation is not None  # set once the stream is exhausted
    out.print_generation_timings(stream.generation.timings)
    return 0


def ask(args: argparse.Namespace) -> int:
    from engine.facade import Engine

    splice = args.splice if args.mode != "baked" else None
    with Engine(args.model, adapter=args.adapter, kb=args.kb, n_threads=args.threads, k=args.k,
                kv_cache=splice == "on") as engine:
        if args.json:
            answer = engine.ask(args.question, args.mode, max_tokens=args.max_tokens, splice=splice)
            print(json.dumps(out.to_jsonable(answer), indent=2))
            return 0
        with engine.stream(args.question, args.mode, max_tokens=args.max_tokens, splice=splice) as stream:
            for piece in stream:
                print(piece, end="", flush=True)
        out.print_answer_sources(stream.answer)
    return 0


def _finetune_config(args: argparse.Namespace):
    from engine.finetune.config import FinetuneConfig

    overrides = {k: v for k, v in (("epochs", args.epochs), ("rank", args.rank), ("limit_facts", args.limit_facts),
                                   ("counterfactual_share", args.counterfactual_share),
                                   ("practice_per_fact", args.practice_per_fact))
                 if v is not None}
    if args.no_reader:
        overrides["reader_per_fact"] = 0.0
    return FinetuneConfig(seed=args.seed, **overrides)


def finetune(args: argparse.Namespace) -> int:
    from engine.finetune import finetune as train

    base = _model_path(args.base)
    bar = out.TrainBar()
    try:
        report = train(args.docs, args.qa, base, args.out, config=_finetune_config(args), kb=args.kb, progress=bar)
    finally:
        bar.close()
    if args.merge is not None:
        from engine.finetune import merge_adapter

        merge_adapter(base, args.out, args.merge)
    out.emit(args.json, report, lambda: out.print_finetune(report))
    return 0


def compare_config(args: argparse.Namespace, base=None):
    """The comparison settings: ``base`` (or the defaults) with the options given on the command line."""
    from engine.bakeoff.compare import CompareConfig

    given = {"train_per_fact": args.train_per_fact, "limit_facts": args.limit_facts,
             "timing_questions": args.timing_questions, "repetitions": args.repetitions,
             "splice_questions": args.splice_questions, "unseen_facts": args.unseen_facts}
    return dataclasses.replace(base or CompareConfig(), **{k: v for k, v in given.items() if v is not None})


def compare(args: argparse.Namespace) -> int:
    from engine.bakeoff.pipeline import compare_and_report

    bar = out.PhaseBar()
    try:
        result, files = compare_and_report(args.kb, args.adapter, args.qa, args.docs, _model_path(args.model),
                                           args.out, compare_config(args), args.threads, bar, out.say,
                                           flash_attn=_flash_attn(args))
    finally:
        bar.close()
    out.emit(args.json, out.comparison_payload(result, files), lambda: out.print_comparison(result, files))
    return 0


def _flash_attn(args: argparse.Namespace) -> bool | None:
    """``--flash-attn on|off`` as the pipeline takes it; None (not given) measures it."""
    return None if args.flash_attn is None else args.flash_attn == "on"


def run_profile(args: argparse.Namespace):
    """The profile ``bakeoff run`` follows (``--profile NAME``; ``--full`` is ``--profile full``), with the
    options given on the command line."""
    from engine.bakeoff.pipeline import profile_named

    if args.full and args.profile not in (None, "full"):
        raise UsageError(f"--full and --profile {args.profile} disagree: give one of them")
    profile = profile_named("full" if args.full else args.profile or "quick")
    finetune_config = profile.finetune
    if args.limit_facts is not None:  # the adapter is trained on the facts that are graded
        finetune_config = dataclasses.replace(finetune_config, limit_facts=args.limit_facts)
    return dataclasses.replace(profile, finetune=finetune_config, compare=compare_config(args, profile.compare))


def run(args: argparse.Namespace) -> int:
    from engine.bakeoff.pipeline import PHASES, run_bakeoff

    bars = out.RunBars(PHASES)
    try:
        done = run_bakeoff(args.work, run_profile(args), threads=args.threads, flash_attn=_flash_attn(args),
                           progress=bars)
    finally:
        bars.close()
    out.print_run_phases(done)
    out.emit(args.json, out.comparison_payload(done.result, done.files),
             lambda: out.print_comparison(done.result, done.files))
    return 0


# ---- server -------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    from engine.serve import ServeConfig
    from engine.serve import serve as run_server
    from engine.serve.server import print_ready

    config = ServeConfig(kb=args.kb, adapter=args.adapter, work=args.work, model=args.model, host=args.host,
                         port=args.port, api_key=args.api_key, kv_cache=args.kv_cache, max_waiting=args.queue,
                         deadline_s=args.deadline, cors_origins=tuple(args.cors_origin), threads=args.threads)
    try:
        config.validate()
    except errors.InputError as error:
        raise UsageError(str(error)) from None
    run_server(config, ready=print_ready, say=out.say)
    return 0


# ---- robustness ---------------------------------------------------------------------


def robustness(args: argparse.Namespace) -> int:
    from engine.robustness import RobustnessConfig
    from engine.robustness import run as run_checks

    config = RobustnessConfig(seconds=args.seconds, kills=args.kills, asks=args.asks, seed=args.seed)
    report = run_checks(config, work=args.work, progress=out.say)
    out.emit(args.json, report, lambda: out.print_robustness(report))
    return 0 if report.failures == 0 else 1
