"""pytest plugin for an app's own latency tests: a ready ``Engine`` and its stage timings in the benchmark JSON.

Registered through the ``pytest11`` entry point, so every pytest session of a project
with bakeoff installed has:

- the session fixture ``bakeoff_engine``: an :class:`engine.Engine` with a knowledge
  base, closed at the end of the session;
- :func:`record_answer_timings`: an answer's per-stage timings into pytest-benchmark's
  ``benchmark.extra_info``, so ``pytest --benchmark-json out.json`` carries them
  (flattened by :func:`flat_timings`: ``"ttft_ms"``, ``"search.embed_ms"``,
  ``"generation.prefill_ms"``, ...).

Settings, each a command-line option or an ini option (the command line wins; a
relative ini path is relative to the config file, a relative option to the current
folder):

- ``--bakeoff-kb DIR`` / ``bakeoff_kb``: an existing knowledge base to open instead of
  building one from the documents;
- ``--bakeoff-docs PATH`` / ``bakeoff_docs``: file, folder or glob of ``.md``/``.txt``
  documents to build the session's knowledge base from (default: the bundled set);
- ``--bakeoff-model GGUF`` / ``bakeoff_model``: the generator (default: the default
  generator from the model cache, fetched if missing);
- ``--bakeoff-adapter GGUF`` / ``bakeoff_adapter``: a LoRA adapter; "baked" mode needs one.

The plugin is loaded by every pytest session, including ones that never ask for the
engine, so this module imports only pytest: the engine's heavy parts (the native
extension, ONNX Runtime, Numba) are imported inside the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

    from engine.answer.types import AnswerTimings
    from engine.facade import Answer, Engine
    from engine.kb import KnowledgeBase

__all__ = ["EXTRA_INFO_KEY", "bakeoff_engine", "flat_timings", "record_answer_timings"]

#: The key of ``benchmark.extra_info`` that :func:`record_answer_timings` fills.
EXTRA_INFO_KEY = "answer_timings"


@dataclass(frozen=True)
class _Option:
    name: str
    metavar: str
    help: str
    # What to do when the path does not exist; None: the engine checks it (docs may be a glob).
    if_missing: str | None


_OPTIONS = (
    _Option("kb", "DIR", "an existing knowledge base to open instead of building one from the documents",
            "build one with `bakeoff index DOCS --kb DIR`, or leave the setting out to build one per session"),
    _Option("docs", "PATH", "file, folder or glob of .md/.txt documents to build the session's knowledge base "
            "from (default: the bundled set)", None),
    _Option("model", "GGUF", "the generator GGUF (default: the default generator from the model cache)",
            "give a GGUF file, or leave the setting out to use the default generator"),
    _Option("adapter", "GGUF", "a LoRA adapter GGUF for mode='baked'",
            "give an adapter GGUF (make one with `bakeoff finetune`), or leave the setting out"),
)


@dataclass(frozen=True)
class _Setting:
    path: Path
    origin: str  # where the value came from, as the user wrote it, for error messages


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--bakeoff-{kb,docs,model,adapter}`` and their ini options ``bakeoff_*``."""
    group = parser.getgroup("bakeoff", "bakeoff engine fixture (bakeoff_engine)")
    for option in _OPTIONS:
        group.addoption(f"--bakeoff-{option.name}", metavar=option.metavar, default=None,
                        help=f"{option.help}; ini: bakeoff_{option.name}")
        parser.addini(f"bakeoff_{option.name}", f"{option.help}; relative to the config file",
                      type="string", default="")


@pytest.fixture(scope="session")
def bakeoff_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A ready :class:`engine.Engine` for the whole session, closed at its end.

    Opens the knowledge base of ``--bakeoff-kb`` / ``bakeoff_kb``, or builds one in a
    session temporary folder from ``--bakeoff-docs`` / ``bakeoff_docs`` (default: the
    bundled documents); loads ``--bakeoff-model`` (default: the default generator) and
    ``--bakeoff-adapter`` if given. Default models are fetched into the model cache
    when missing (a no-op once cached).

    Raises:
        pytest.fail.Exception: a setting names a path that does not exist, or the
            engine refused a part (its ``engine.errors`` message says what to do); the
            message names the setting, and no traceback is shown.
    """
    settings = {option.name: _setting(request.config, option) for option in _OPTIONS}
    from engine import Engine, models
    from engine.errors import AdapterError, EngineError

    model = settings["model"]
    if model is None:
        with _reported(f"the default generator {models.DEFAULT_GENERATOR}"):
            [fetched] = models.fetch([models.DEFAULT_GENERATOR])
        model = _Setting(fetched.main_path, f"the default generator {models.DEFAULT_GENERATOR}")
    knowledge_base = _knowledge_base(settings["kb"], settings["docs"], tmp_path_factory)
    adapter = settings["adapter"]
    try:
        engine = Engine(model.path, adapter=adapter.path if adapter else None, kb=knowledge_base)
    except BaseException as err:
        knowledge_base.close()  # the engine owns it only once constructed
        if isinstance(err, EngineError):
            _fail(adapter.origin if adapter and isinstance(err, AdapterError) else model.origin, err)
        raise
    with engine:
        yield engine


def record_answer_timings(benchmark: BenchmarkFixture, answer: Answer) -> Answer:
    """Append ``answer``'s per-stage timings to ``benchmark.extra_info["answer_timings"]``.

    ``extra_info["answer_timings"]`` maps every measured field of
    :class:`engine.AnswerTimings` to a list with one value per recorded answer, in call
    order. The nested timings are flattened with dotted names: ``ttft_ms``,
    ``total_ms``, ``retrieval_ms``, ``prompt_build_ms``; the search's
    ``search.embed_ms``, ``search.dense_search_ms``, ``search.lexical_search_ms``,
    ``search.scoring_ms``, ``search.total_ms``; the generator's
    ``generation.prefill_ms``, ``generation.decode_ms``, ``generation.ttft_ms``,
    ``generation.prompt_tokens``, ``generation.reused_tokens``,
    ``generation.decode_tokens_per_s`` and the rest of :class:`engine.GenerationTimings`
    that carries a unit (``_ms``, ``_tokens``, ``_per_s``; what describes the hardware,
    such as ``backend``, is left out). An answer that searched nothing ("baked" mode, or
    ``passages=`` given) records ``None`` for every ``search.`` field, so the lists stay
    aligned. Lists rather than one summary, because the benchmark's own statistics
    already summarize the wall time: these samples say where each run's time went, and
    any statistic can be taken from them.

    Call it inside the benchmarked function so that every run is recorded. Every call
    counts, warm-up and calibration runs included: ``benchmark.pedantic(fn, rounds=N,
    iterations=1)`` (no warm-up) records exactly N answers.

    Args:
        benchmark: pytest-benchmark's ``benchmark`` fixture of the running test.
        answer: what :meth:`engine.Engine.ask` returned (or a stream's ``answer``).

    Returns:
        ``answer``, so the benchmarked function can end with
        ``return record_answer_timings(benchmark, engine.ask(...))``.

    Raises:
        InputError: ``answer`` is not an :class:`engine.Answer`.
    """
    from engine import Answer
    from engine.errors import InputError

    if not isinstance(answer, Answer):
        raise InputError(f"record_answer_timings takes the engine.Answer that Engine.ask returns, "
                         f"got {type(answer).__name__}")
    samples = benchmark.extra_info.setdefault(EXTRA_INFO_KEY, {})
    for name, value in flat_timings(answer.timings).items():
        samples.setdefault(name, []).append(value)
    return answer


def flat_timings(timings: AnswerTimings) -> dict[str, float | int | None]:
    """The measured fields of an :class:`engine.AnswerTimings`, nested ones under dotted names
    (:meth:`engine.AnswerTimings.flat`)."""
    return timings.flat()


def _setting(config: pytest.Config, option: _Option) -> _Setting | None:
    """The path a setting names (command line first, then ini), checked to exist where it must."""
    value = config.getoption(f"--bakeoff-{option.name}")
    if value:
        # Relative to where pytest was started, as any path typed on a command line.
        setting = _Setting(config.invocation_params.dir / Path(value).expanduser(),
                           f"--bakeoff-{option.name} {value}")
    else:
        value = config.getini(f"bakeoff_{option.name}")
        if not value:
            return None
        # Relative to the config file, as pytest's own "paths" ini type (the folder pytest
        # started in when the value comes from `-o` without a config file).
        base = config.inipath.parent if config.inipath else config.invocation_params.dir
        setting = _Setting(base / Path(value).expanduser(),
                           f"bakeoff_{option.name} = {value} (ini option, relative to {base})")
    if option.if_missing is not None and not setting.path.exists():
        _fail(setting.origin, f"{setting.path} does not exist: {option.if_missing}")
    return setting


def _knowledge_base(kb: _Setting | None, docs: _Setting | None,
                    tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    """Open ``kb``, or build a knowledge base from ``docs`` (the bundled set when None) for this session."""
    from engine import models
    from engine.kb import KnowledgeBase
    from engine.questions.qa import BUNDLED_SET

    if kb is not None:
        with _reported(kb.origin):
            return KnowledgeBase.open(kb.path)
    with _reported(f"the default embedder {models.DEFAULT_EMBEDDER}"):
        models.fetch([models.DEFAULT_EMBEDDER])
    source = docs or _Setting(BUNDLED_SET / "docs", "the bundled documents")
    with _reported(source.origin):
        return KnowledgeBase.build(source.path, into=tmp_path_factory.mktemp("bakeoff-kb"))


@contextmanager
def _reported(origin: str) -> Iterator[None]:
    """An ``EngineError`` inside becomes a test failure naming ``origin``, without traceback."""
    from engine.errors import EngineError

    try:
        yield
    except EngineError as err:
        _fail(origin, err)


def _fail(origin: str, problem: object) -> NoReturn:
    # `from None`: the engine's message is already in ours; pytest would print it twice, chained.
    raise pytest.fail.Exception(f"bakeoff_engine: {origin}: {problem}", pytrace=False) from None
