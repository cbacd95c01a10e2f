"""``engine.robustness`` and ``bakeoff robustness``: threads searching, writing and asking at once
(issue 12), and the command's figures."""

from __future__ import annotations

import json

import pytest

from engine.cli import main as cli
from engine.embedding.embedder import Embedder
from engine.errors import InputError
from engine.robustness import RobustnessConfig
from engine.robustness.concurrency import EXTRA_DOCUMENT, build_qa_kb, search_write_ask

SECONDS = 15.0


def test_eight_searchers_a_writer_and_an_asker_run_without_fault_and_answer_as_single_threaded(
        tmp_path, embedder_dir, generator_model_path):
    kb_dir = build_qa_kb(tmp_path / "kb", Embedder(cache_dir=embedder_dir.parent))
    extra = tmp_path / "extra.md"
    extra.write_text(EXTRA_DOCUMENT, encoding="utf-8")
    report = search_write_ask(kb_dir, extra, seconds=SECONDS, searchers=8, model_path=generator_model_path,
                              cache_dir=embedder_dir.parent)
    print(f"\n{report.threads} threads x {report.seconds:.1f} s: {report.searches} searches, {report.writes} writes, "
          f"{report.asks} answers ({report.answers_differing} unlike single-threaded); questions {report.questions}; "
          f"the two single-threaded rounds agreed: {report.reference_reuse_stable}")
    assert not report.faults, "\n".join(report.faults[:5])
    assert report.threads == 10 and len(report.questions) == 2
    assert report.answers_differing == 0
    assert report.asks >= 2 and report.searches >= 100 and report.writes >= 4, report
    assert report.thread_seconds_without_fault >= 10 * SECONDS


def test_bakeoff_robustness_prints_every_figure_as_json(tmp_path, embedder_dir, generator_model_path, capsys):
    code = cli.main(["robustness", "--seconds", "10", "--kills", "5", "--asks", "10", "--work", str(tmp_path / "work"),
                     "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["config"] == {"seconds": 10.0, "kills": 5, "asks": 10, "seed": 12, "searchers": 8}
    assert report["failures"] == 0 and report["elapsed_s"] > 0
    for fuzz in ("kb_fuzz", "gguf_fuzz"):
        assert report[fuzz]["cases"] >= 1 and report[fuzz]["failures"] == [], report[fuzz]
    assert report["kb_fuzz"]["runs"] == sum(report["kb_fuzz"]["outcomes"].values())
    kills = report["kills"]
    assert 1 <= kills["runs"] <= 5 and kills["survived"] == kills["runs"] and kills["failures"] == []
    faults = report["write_faults"]
    assert faults["runs"] >= 3 and faults["survived"] == faults["runs"], faults
    threads = report["concurrency"]
    assert threads["threads"] == 10 and threads["faults"] == [] and threads["thread_seconds_without_fault"] > 0
    memory = report["memory"]
    assert memory["asks"] == 10 and memory["fault"] == "" and memory["rss_end_mib"] > 0
    assert memory["growth_mib"] == pytest.approx(memory["rss_end_mib"] - memory["rss_after_warmup_mib"])


@pytest.mark.parametrize("field, value", [("seconds", 0.0), ("kills", 0), ("asks", 1.5), ("searchers", True)])
def test_a_setting_out_of_range_is_an_input_error(field, value):
    with pytest.raises(InputError, match=field):
        RobustnessConfig(**{field: value}).validate()


def test_a_work_folder_that_is_not_empty_is_refused(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert cli.main(["robustness", "--work", str(tmp_path), "--json"]) == 1
    assert "is not empty" in json.loads(capsys.readouterr().out)["message"]
