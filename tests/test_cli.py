"""The ``bakeoff`` command line, driven in-process with real models and files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine import cli, models
from engine.qa import BUNDLED_SET


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


def test_hardware_says_what_auto_does_with_extra_buffers(capsys):
    code, out, _ = _run(capsys, "hardware", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["extra_buffer_types_auto"] == (not info["llama_cpu_amx"])
    code, out, _ = _run(capsys, "hardware")
    line = [text for text in out.splitlines() if "extra_buffers='auto'" in text]
    assert line and (" off (" in line[0]) == info["llama_cpu_amx"]


def test_run_follows_the_quick_profile_unless_told_otherwise():
    from engine.pipeline import FULL, QUICK

    parser = cli._build_parser()
    assert cli._run_profile(parser.parse_args(["run"])) == QUICK
    assert cli._run_profile(parser.parse_args(["run", "--full"])) == FULL
    custom = cli._run_profile(parser.parse_args(["run", "--limit-facts", "12", "--repetitions", "1"]))
    assert custom.finetune.limit_facts == custom.compare.limit_facts == 12
    assert custom.compare.repetitions == 1 and custom.compare.timing_questions == QUICK.compare.timing_questions
    assert custom.finetune.spread_facts and custom.compare.spread_facts
