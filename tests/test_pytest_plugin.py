"""The pytest plugin (``engine.pytest_plugin``) as an app's own test suite meets it.

Each test writes a small app test file and runs pytest on it in a child process
(the plugin comes from the installed ``pytest11`` entry point, the engine loads the
real default models), then checks what the app's developer would see: the benchmark
JSON, which knowledge base the engine searched, or the error a bad setting gives.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

# Imported here, not in the tests: pytester drops the modules a test imports when it ends,
# and numpy (under both) refuses to be imported a second time in one process.
from engine import Answer, AnswerTimings, GenerationTimings, SearchTimings
from engine.errors import InputError
from engine.kb import KnowledgeBase
from engine.pytest_plugin import EXTRA_INFO_KEY, flat_timings, record_answer_timings

pytest_plugins = ["pytester"]

# A child run loads the generator and the embedder (seconds); building the bundled
# knowledge base adds ~10 s on 2 cores. The bound only stops a hung child.
_TIMEOUT_S = 600
_QUIET = ("-p", "no:cacheprovider")

#: The names record_answer_timings fills: the answer's own, the search's and the generator's measured fields.
_EXPECTED_NAMES = ({"retrieval_ms", "prompt_build_ms", "ttft_ms", "total_ms", "kv_ms"}
                   | {f"search.{f.name}" for f in fields(SearchTimings)}
                   | {f"generation.{f.name}" for f in fields(GenerationTimings)
                      if f.name.endswith(("_ms", "_tokens", "_per_s"))})

_PUMP = """# Tidewell pump

The Tidewell pump moves 40 litres per minute. Its impeller is made of ceramic.
"""
_FILTER = """# Marrow filter

The Marrow filter cartridge lasts 9 weeks. Rinse it in tank water, never tap water.
"""


@pytest.fixture(scope="module")
def tiny_docs(tmp_path_factory) -> Path:
    """A folder of two short Markdown documents."""
    folder = tmp_path_factory.mktemp("tiny-docs")
    (folder / "pump.md").write_text(_PUMP, encoding="utf-8")
    (folder / "filter.md").write_text(_FILTER, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_kb(tiny_docs, embedder_dir, tmp_path_factory) -> Path:
    """A knowledge base built from ``tiny_docs`` (closed again: the child runs open it)."""
    path = tmp_path_factory.mktemp("tiny-kb") / "kb"
    KnowledgeBase.build(tiny_docs, into=path).close()
    return path


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*_QUIET, *args, timeout=_TIMEOUT_S)


def _assert_no_traceback(result: pytest.RunResult) -> None:
    """The setup error is the one message: no frames, and the engine's error not printed again, chained."""
    out = result.stdout.str()
    for noise in ("Traceback", "During handling", "pytest_plugin.py"):
        assert noise not in out, out


def _app_expecting_kb(kb: Path, documents: int, then: str = "") -> str:
    """An app test that checks which knowledge base ``bakeoff_engine`` searches, then runs ``then``."""
    return f"""
from pathlib import Path

def test_engine_searches_the_configured_knowledge_base(bakeoff_engine):
    stats = bakeoff_engine.kb.stats()
    assert Path(stats.path).resolve() == Path({str(kb)!r}).resolve()
    assert stats.documents == {documents}
    {then}
"""


def test_benchmark_json_carries_every_stage_of_every_run(pytester):
    pytester.makepyfile(test_app="""
from engine.pytest_plugin import record_answer_timings

def test_answer_latency(bakeoff_engine, benchmark):
    def ask():
        answer = bakeoff_engine.ask("How long is the Brookling B5 warranty?", mode="rag", max_tokens=8)
        return record_answer_timings(benchmark, answer)

    answer = benchmark.pedantic(ask, rounds=2, iterations=1)
    assert answer.citations
""")
    out = pytester.path / "benchmarks.json"
    result = _run(pytester, f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)

    [bench] = json.loads(out.read_text(encoding="utf-8"))["benchmarks"]
    timings = bench["extra_info"][EXTRA_INFO_KEY]
    assert set(timings) == _EXPECTED_NAMES
    assert all(len(samples) == 2 for samples in timings.values()), "one sample per round"
    for run in range(2):
        t = {name: samples[run] for name, samples in timings.items()}
        assert t["generation.prefill_ms"] > 0 and t["ttft_ms"] > 0 and t["total_ms"] > 0
        # "rag" mode: every retrieval stage ran, inside the retrieval step, before the first token.
        search = [t[f"search.{stage}"] for stage in ("embed_ms", "dense_search_ms", "lexical_search_ms", "scoring_ms")]
        assert min(search) > 0 and sum(search) <= t["search.total_ms"] <= t["retrieval_ms"]
        assert t["retrieval_ms"] + t["prompt_build_ms"] < t["ttft_ms"] <= t["total_ms"]
        assert t["retrieval_ms"] + t["prompt_build_ms"] + t["generation.total_ms"] <= t["total_ms"]
        assert t["generation.prompt_tokens"] > 0 and t["generation.decode_tokens"] > 0
    # The samples belong to the calls the benchmark timed (its stats are in seconds).
    assert min(timings["total_ms"]) <= bench["stats"]["min"] * 1000
    assert max(timings["total_ms"]) <= bench["stats"]["max"] * 1000


def test_kb_option_opens_that_knowledge_base_and_wins_over_the_ini(pytester, tiny_kb):
    pytester.makeini("[pytest]\nbakeoff_kb = no-such-kb\n")
    pytester.makepyfile(test_app=_app_expecting_kb(tiny_kb, documents=2))
    _run(pytester, "--bakeoff-kb", str(tiny_kb)).assert_outcomes(passed=1)


def test_ini_kb_path_is_relative_to_the_config_file(pytester, tiny_kb, monkeypatch):
    shutil.copytree(tiny_kb, pytester.path / "kbs" / "tiny")
    pytester.makeini("[pytest]\nbakeoff_kb = kbs/tiny\n")
    app = pytester.mkdir("app")
    answers_from_it = "\n    ".join([
        'answer = bakeoff_engine.ask("What is the Tidewell impeller made of?", mode="rag", max_tokens=4)',
        'assert Path(answer.citations[0].source).name == "pump.md"'])
    (app / "test_app.py").write_text(_app_expecting_kb(pytester.path / "kbs" / "tiny", 2, then=answers_from_it),
                                     encoding="utf-8")
    monkeypatch.chdir(app)  # started from elsewhere than the config file's folder
    _run(pytester, "test_app.py").assert_outcomes(passed=1)


def test_docs_and_model_options_build_the_session_knowledge_base(pytester, tiny_docs, generator_model_path):
    pytester.makepyfile(test_app=f"""
from pathlib import Path

def test_engine_uses_the_given_documents_and_model(bakeoff_engine):
    assert bakeoff_engine.kb.stats().documents == 2
    assert Path(bakeoff_engine.generator.info.path).resolve() == Path({str(generator_model_path)!r}).resolve()
""")
    _run(pytester, "--bakeoff-docs", str(tiny_docs), "--bakeoff-model", str(generator_model_path)
         ).assert_outcomes(passed=1)


@pytest.mark.parametrize(("args", "ini", "said"), [
    (["--bakeoff-kb", "no-such-kb"], "",
     "--bakeoff-kb no-such-kb: * does not exist: build one with `bakeoff index"),
    ([], "bakeoff_kb = no-such-kb",
     "bakeoff_kb = no-such-kb (ini option, relative to *): * does not exist: build one with"),
    (["--bakeoff-model", "no-such.gguf"], "",
     "--bakeoff-model no-such.gguf: * does not exist: give a GGUF file*"),
    (["--bakeoff-adapter", "no-such.gguf"], "",
     "--bakeoff-adapter no-such.gguf: * does not exist: *`bakeoff finetune`*"),
    (["--bakeoff-docs", "no-such-docs"], "",
     "--bakeoff-docs no-such-docs: *no-such-docs: no such file or folder*"),
], ids=["kb", "kb-ini", "model", "adapter", "docs"])
def test_a_bad_path_fails_the_setup_with_what_to_do(pytester, args, ini, said):
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_app="def test_uses_the_engine(bakeoff_engine):\n    pass\n")
    result = _run(pytester, *args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"bakeoff_engine: {said}*"])
    _assert_no_traceback(result)


def test_a_folder_that_is_not_a_knowledge_base_names_the_setting_and_the_fix(pytester, tiny_docs):
    pytester.makepyfile(test_app="def test_uses_the_engine(bakeoff_engine):\n    pass\n")
    result = _run(pytester, "--bakeoff-kb", str(tiny_docs))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"bakeoff_engine: --bakeoff-kb {tiny_docs}: *not a knowledge base*bakeoff index*"])
    _assert_no_traceback(result)


def test_record_answer_timings_refuses_what_is_not_an_answer():
    with pytest.raises(InputError, match="engine.Answer that Engine.ask returns, got str"):
        record_answer_timings(None, "the answer's text")


def _answer(mode: str, search: SearchTimings | None) -> Answer:
    generation = GenerationTimings(
        tokenize_ms=0.0, prompt_tokens=40, truncated_tokens=0, reused_tokens=10, prefill_ms=12.0, prefill_tokens=30,
        prefill_tokens_per_s=2500.0, ttft_ms=14.0, decode_ms=20.0, decode_tokens=5, decode_tokens_per_s=250.0,
        total_ms=34.0, backend="CPU", devices=("CPU",), n_gpu_layers_offloaded=0, extra_buffer_types=False)
    timings = AnswerTimings(search=search, generation=generation, retrieval_ms=3.0 if search else 0.0,
                            prompt_build_ms=1.0, ttft_ms=18.0, total_ms=38.0)
    return Answer("Q?", "A.", mode, (), timings, "eos")


def test_timings_are_flattened_with_dotted_names_and_stay_aligned_across_modes():
    benchmark = SimpleNamespace(extra_info={})
    rag = _answer("rag", SearchTimings(embed_ms=1.0, dense_search_ms=0.2, lexical_search_ms=0.3, scoring_ms=0.4,
                                       total_ms=2.0))
    assert record_answer_timings(benchmark, rag) is rag
    record_answer_timings(benchmark, _answer("baked", None))
    samples = benchmark.extra_info[EXTRA_INFO_KEY]
    assert set(samples) == _EXPECTED_NAMES == set(flat_timings(rag.timings))
    assert samples["search.embed_ms"] == [1.0, None], "nothing searched: None, not a measured 0"
    assert samples["generation.prefill_ms"] == [12.0, 12.0] and samples["generation.reused_tokens"] == [10, 10]
    assert samples["ttft_ms"] == [18.0, 18.0] and samples["retrieval_ms"] == [3.0, 0.0]
    assert "generation.backend" not in samples and "generation.devices" not in samples
    json.dumps(benchmark.extra_info)  # what pytest-benchmark writes must be JSON
