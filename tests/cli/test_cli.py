"""The ``bakeoff`` command line, driven in-process with real models and files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import models
from engine.cli import commands as cli_commands
from engine.cli import main as cli
from engine.questions.qa import BUNDLED_SET

DOCS = BUNDLED_SET / "docs"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_list_and_fetch_are_machine_readable(capsys, generator_model_path, embedder_dir):
    code, out, _ = _run(capsys, "models", "list", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows[models.DEFAULT_GENERATOR]["path"] == str(generator_model_path)
    code, out, _ = _run(capsys, "models", "fetch", "--json")
    assert code == 0
    assert all(not item["downloaded"] for item in json.loads(out)), "a second fetch does nothing"


def test_index_then_search(capsys, embedder_dir, tmp_path):
    kb = tmp_path / "kb"
    docs = BUNDLED_SET / "docs"
    code, out, _ = _run(capsys, "index", str(docs / "warranty-terms.md"), str(docs / "price-list-2025.md"),
                        "--kb", str(kb), "--json")
    assert code == 0
    assert json.loads(out)["stats"]["documents"] == 2
    code, out, _ = _run(capsys, "search", "How much does the Tidewarden Hub cost?", "--kb", str(kb), "-k", "2", "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result["hits"]) == 2
    assert result["hits"][0]["source"].endswith("price-list-2025.md")
    assert set(result["timings"]) >= {"embed_ms", "dense_search_ms", "lexical_search_ms", "scoring_ms", "total_ms"}
    code, out, _ = _run(capsys, "search", "warranty", "--kb", str(kb))
    assert code == 0 and "timings: embed" in out


def test_errors_are_typed_and_exit_1(capsys, embedder_dir, tmp_path):
    code, out, _ = _run(capsys, "search", "anything", "--kb", str(tmp_path / "nothing-here"), "--json")
    assert code == 1
    error = json.loads(out)
    assert error["error"].startswith("KnowledgeBase") and error["message"]
    code, _, err = _run(capsys, "index", str(tmp_path / "missing-folder"), "--kb", str(tmp_path / "kb"))
    assert code == 1 and "InputError" in err


def test_generate_prints_text_and_json(capsys, generator_model_path):
    code, out, _ = _run(capsys, "generate", "What is the capital of France?", "--chat", "--max-tokens", "8", "--json")
    assert code == 0
    result = json.loads(out)
    assert "Paris" in result["text"] and result["timings"]["decode_tokens"] >= 1


def test_python_dash_m_engine_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "bakeoff" in done.stdout and "compare" in done.stdout


def test_finetune_without_the_extra_says_which_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    code, _, err = _run(capsys, "finetune", "--out", str(tmp_path / "a.gguf"), "--limit-facts", "1")
    assert code == 1
    assert "MissingExtraError" in err and "finetune" in err


def test_finetune_asks_for_the_knowledge_base_its_reader_examples_come_from(capsys, tmp_path, generator_model_path):
    pytest.importorskip("torch")
    code, _, err = _run(capsys, "finetune", "--out", str(tmp_path / "a.gguf"), "--limit-facts", "1")
    assert code != 0 and "--kb" in err and "InputError" in err
    assert not (tmp_path / "a.gguf").exists()


def test_hardware_says_what_auto_does_with_extra_buffers(capsys):
    code, out, _ = _run(capsys, "hardware", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["extra_buffer_types_auto"] == (not info["llama_cpu_amx"])
    code, out, _ = _run(capsys, "hardware")
    line = [text for text in out.splitlines() if "extra_buffers='auto'" in text]
    assert line and (" off (" in line[0]) == info["llama_cpu_amx"]


def test_run_follows_the_quick_profile_unless_told_otherwise():
    from engine.bakeoff.pipeline import FULL, QUICK

    parser = cli.build_parser()
    assert cli_commands.run_profile(parser.parse_args(["run"])) == QUICK
    assert cli_commands.run_profile(parser.parse_args(["run", "--full"])) == FULL
    custom = cli_commands.run_profile(parser.parse_args(["run", "--limit-facts", "12", "--repetitions", "1"]))
    assert custom.finetune.limit_facts == custom.compare.limit_facts == 12
    assert custom.compare.repetitions == 1 and custom.compare.timing_questions == QUICK.compare.timing_questions
    assert custom.finetune.spread_facts and custom.compare.spread_facts
    unseen = cli_commands.run_profile(parser.parse_args(["run", "--unseen-facts", "0", "--splice-questions", "3"]))
    assert unseen.compare.unseen_facts == 0 and unseen.compare.splice_questions == 3
    assert unseen.compare.timing_questions == QUICK.compare.timing_questions
    assert cli_commands.run_profile(parser.parse_args(["run", "--profile", "standard"])).name == "standard"
    assert cli_commands.run_profile(parser.parse_args(["run", "--profile", "full"])) == FULL
    compare = cli_commands.compare_config(parser.parse_args(["compare", "--kb", "k", "--adapter", "a", "--out", "o"]))
    assert compare.unseen_facts is None and compare.splice_questions is None, "compare grades everything by default"
    flash = [cli_commands._flash_attn(parser.parse_args([command, *given, "--kb", "k", "--adapter", "a", "--out", "o"]
                                                        if command == "compare" else [command, *given]))
             for command in ("run", "compare") for given in ([], ["--flash-attn", "on"], ["--flash-attn", "off"])]
    assert flash == [None, True, False] * 2, "measured unless given"


def test_a_profile_that_does_not_exist_is_refused_naming_those_that_do(capsys, tmp_path):
    code, _, err = _run(capsys, "run", "--profile", "fast", "--work", str(tmp_path))
    assert code == 1 and "no run profile named 'fast': choose one of quick, standard, full" in err
    code, _, err = _run(capsys, "run", "--profile", "standard", "--full", "--work", str(tmp_path))
    assert code == 2 and "disagree" in err
    assert not any(tmp_path.iterdir()), "refused before any work"


def _index(capsys, kb, *options: str) -> tuple[int, str, str]:
    return _run(capsys, "index", str(DOCS / "warranty-terms.md"), "--kb", str(kb), *options)


def _stats(capsys, kb) -> dict:
    code, out, _ = _index(capsys, kb, "--json")
    assert code == 0
    return json.loads(out)["stats"]


def test_overlap_tokens_0_is_a_value_not_a_missing_option(capsys, embedder_dir, tmp_path):
    code, out, _ = _index(capsys, tmp_path / "kb", "--overlap-tokens", "0", "--json")
    assert code == 0
    assert json.loads(out)["stats"]["chunking"] == {"chunk_tokens": 200, "overlap_tokens": 0}


def test_chunking_options_that_an_existing_knowledge_base_would_ignore_are_refused(capsys, embedder_dir, tmp_path):
    kb = tmp_path / "kb"
    assert _index(capsys, kb)[0] == 0
    generation = _stats(capsys, kb)["generation"]
    code, _, err = _run(capsys, "index", str(DOCS / "price-list-2025.md"), "--kb", str(kb), "--chunk-tokens", "64")
    assert code == 2, "a usage error, like argparse's own"
    assert "was built with --chunk-tokens 200 --overlap-tokens 40" in err
    assert "--rebuild --chunk-tokens 64" in err and "drop the option" in err
    stats = _stats(capsys, kb)
    assert stats["generation"] == generation and stats["documents"] == 1, "nothing was added"
    code, out, _ = _index(capsys, kb, "--overlap-tokens", "0", "--json")
    assert code == 2 and json.loads(out)["error"] == "error" and "--overlap-tokens 0" in json.loads(out)["message"]
    # The values it was built with are no contradiction.
    assert _index(capsys, kb, "--chunk-tokens", "200", "--overlap-tokens", "40")[0] == 0


def test_rebuild_replaces_the_knowledge_base_with_the_new_chunking(capsys, embedder_dir, tmp_path):
    kb = tmp_path / "kb"
    assert _run(capsys, "index", str(DOCS / "price-list-2025.md"), "--kb", str(kb))[0] == 0
    code, out, _ = _index(capsys, kb, "--rebuild", "--chunk-tokens", "64", "--overlap-tokens", "8", "--json")
    assert code == 0
    stats = json.loads(out)["stats"]
    assert stats["chunking"] == {"chunk_tokens": 64, "overlap_tokens": 8}
    assert stats["documents"] == 1, "rebuilt from the given documents alone"
    code, out, _ = _index(capsys, kb)
    assert code == 0 and "1 documents" in out and "chunks of 64 tokens overlapping 8" in out


def test_ask_prints_the_passages_it_was_given_and_the_composed_timings(capsys, generator_model_path, embedder_dir,
                                                                        tmp_path):
    kb = tmp_path / "kb"
    assert _index(capsys, kb)[0] == 0
    code, out, err = _run(capsys, "ask", "How long is the warranty?", "--kb", str(kb), "-k", "2",
                          "--max-tokens", "8")
    assert code == 0
    assert "warranty-terms.md:" in out and "(chunk " in out
    assert "prompt " in err and " reused) | ttft " in err and "total " in err
    code, out, _ = _run(capsys, "ask", "How long is the warranty?", "--kb", str(kb), "-k", "2",
                        "--max-tokens", "8", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["citations"] and all(c["text"] for c in answer["citations"])
    assert answer["timings"]["generation"]["prompt_tokens"] > 0 and answer["timings"]["search"]["embed_ms"] > 0


def test_index_kv_cache_precomputes_every_chunk_state_and_ask_splices_them(capsys, generator_model_path,
                                                                           embedder_dir, tmp_path):
    kb = tmp_path / "kb"
    assert _index(capsys, kb)[0] == 0
    code, out, _ = _run(capsys, "index", str(DOCS / "warranty-terms.md"), "--kb", str(kb), "--kv-cache", "--json")
    report = json.loads(out)
    assert code == 0 and report["kv_cache"]["states"] == report["stats"]["chunks"] > 0
    assert len(list((kb / "kv").glob("*/*.kv"))) == report["stats"]["chunks"]
    code, out, _ = _run(capsys, "ask", "How long is the warranty?", "--kb", str(kb), "-k", "2",
                        "--max-tokens", "8", "--splice", "on", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["timings"]["kv_computed"] == 0
    assert answer["timings"]["generation"]["spliced_tokens"] > 0


def test_the_parser_loads_no_engine_part():
    """``bakeoff --help`` must start in a blink: no native core, ONNX Runtime or model loaded to print it."""
    code = ("import sys; from engine.cli import main as cli; cli.build_parser(); "
            "print(' '.join(m for m in sys.modules if m.startswith(('engine.', 'llama_cpp', 'onnxruntime', 'numba'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = set(done.stdout.split())
    assert done.returncode == 0, done.stderr
    assert not loaded & {"engine.facade", "engine.generation.generator", "engine._native", "engine.kb", "llama_cpp",
                         "onnxruntime", "numba"}, loaded
