"""The report written from a hand-made comparison: intervals, every latency row, the follows table, plots."""

from __future__ import annotations

import json

import pytest

from engine.bakeoff.compare import ComparisonResult
from engine.bakeoff.grading import GradedAnswer
from engine.bakeoff.latency import STAGES, LatencySummary
from engine.bakeoff.memory import MemoryFootprint
from engine.bakeoff.metadata import cpu_model, git_commit, run_metadata
from engine.bakeoff.plots import figures, footer_text
from engine.bakeoff.report import write_report

pytest.importorskip("matplotlib")

CONTEXT = {"model": "SmolLM2-135M-Instruct-Q4_1.gguf", "cpu": "Test CPU 9000", "threads": 2,
           "commit": "abc1234+dirty", "date": "2026-12-05 21:00 UTC", "platform": "Linux-test"}


def _latency(mode: str, prefill: float, *, search: bool = True, kv: float = 0.0, splice: float = 0.0,
             decode: float = 600.0) -> LatencySummary:
    stages = dict.fromkeys(STAGES, 0.0)
    if search:
        stages.update({"search.embed_ms": 4.2, "search.dense_search_ms": 0.3, "search.lexical_search_ms": 0.9,
                       "search.scoring_ms": 0.6})
    stages.update({"prompt_build_ms": 0.4, "kv_ms": kv, "generation.splice_ms": splice,
                   "generation.prefill_ms": prefill, "generation.decode_ms": decode})
    ttft = sum(v for k, v in stages.items() if k != "generation.decode_ms") + 15
    return LatencySummary(mode, 20, stages, ttft, ttft * 1.3, ttft + decode, (ttft + decode) * 1.2, 410.0, 20.0)


@pytest.fixture
def result() -> ComparisonResult:
    accuracy = {"rag": {"train": 0.75, "heldout": 0.5, "updated": 0.875, "unseen": 0.625},
                "baked": {"train": 1.0, "heldout": 0.25, "updated": 0.0, "unseen": 0.0},
                "hybrid": {"train": 0.9375, "heldout": 0.625, "updated": 0.75, "unseen": 0.5},
                "rag-prefill": {"train": 0.75, "heldout": 0.5}, "rag-spliced": {"train": 0.5, "heldout": 0.5}}
    counts = {mode: {"train": 16, "heldout": 8, "updated": 8, "unseen": 8} for mode in ("rag", "baked", "hybrid")}
    counts |= {"rag-prefill": {"train": 4, "heldout": 4}, "rag-spliced": {"train": 4, "heldout": 4},
               "rag-answer-passage": {"heldout": 8}}
    latency = {"rag": _latency("rag", 180.0), "baked": _latency("baked", 25.0, search=False),
               "hybrid": _latency("hybrid", 185.0), "rag-spliced": _latency("rag-spliced", 30.0, kv=2.5, splice=9.0),
               "hybrid-spliced": _latency("hybrid-spliced", 31.0, kv=2.5, splice=9.0),
               "rag-spliced-cold": _latency("rag-spliced-cold", 30.0, kv=160.0, splice=9.0)}
    return ComparisonResult(
        config={}, latency=latency, accuracy=accuracy, counts=counts, reader_accuracy={"rag-answer-passage":
                                                                                       {"heldout": 0.875}},
        memory=MemoryFootprint(base_model_mb=140.0, adapter_mb=9.0, retrieval_mb=120.0, rag_mode_mb=260.0,
                               baked_mode_mb=149.0),
        follows={"rag": {"n": 10, "passage": 0.9, "old": 0.0}, "hybrid": {"n": 10, "passage": 0.6, "old": 0.3},
                 "baked": {"n": 10, "passage": 0.0, "old": 1.0}},
        abstains={"rag": {"n": 6, "abstained": 0.5, "memory": 0.0, "wrong": 0.5},
                  "hybrid": {"n": 6, "abstained": 0.0, "memory": 5 / 6, "wrong": 1 / 6}},
        edit_skips={"value appears in several passages": 2}, seconds=60.0)


def test_markdown_carries_intervals_the_spliced_rows_and_the_follows_table(result, tmp_path):
    markdown = write_report(result, tmp_path, context=CONTEXT).markdown_path.read_text()
    assert "75.0% (12/16, 95% CI 50.5–89.8)" in markdown
    assert "0.0% (0/8, 95% CI 0.0–32.4)" in markdown, "a zero accuracy still has an upper bound"
    assert "87.5% (7/8, 95% CI 52.9–97.8)" in markdown, "the reader's ceiling carries its interval"
    assert "±22 points at 16 questions" in markdown and "±28 points at 8 questions" in markdown
    summary = markdown.split("## Summary")[1].split("##")[0]
    for row in ("| rag-spliced |", "| hybrid-spliced |", "| rag-spliced-cold |"):
        assert row in summary
    stages = markdown.split("## Latency per stage")[1].split("##")[0]
    assert "rag-spliced-cold" in stages and "| **retrieval (embed to scoring)** |" in stages
    follows = markdown.split("## Does the reader follow the passage?")[1].split("##")[0]
    assert "| hybrid | 10 | 60.0% (6/10, 95% CI 31.3–83.2) | 30.0% (3/10, 95% CI 10.8–60.3) | 6 |" in follows
    assert "| baked | 10 |" in follows and "n/a" in follows.split("| baked |")[1].split("\n")[0]
    assert "could not be edited (2): value appears in several passages: 2" in follows
    head = markdown.split("## Summary")[0]
    assert "- cpu: Test CPU 9000" in head and "- commit: abc1234+dirty" in head


def test_json_holds_an_interval_beside_every_accuracy(result, tmp_path):
    payload = json.loads(write_report(result, tmp_path, context=CONTEXT).json_path.read_text())
    assert payload["intervals"]["rag"]["train"] == pytest.approx([0.5050, 0.8982], abs=1e-4)
    assert payload["intervals"]["rag-answer-passage"] == {"heldout": pytest.approx([0.5291, 0.9776], abs=1e-4)}
    assert set(payload["intervals"]["baked"]) == set(payload["accuracy"]["baked"])
    assert payload["share_intervals"]["abstains"]["hybrid"]["memory"] == pytest.approx([0.4365, 0.9699], abs=1e-4)
    assert payload["follows"]["rag"]["n"] == 10 and payload["context"]["threads"] == 2


def test_a_report_without_the_new_sets_leaves_them_out(result, tmp_path):
    result.follows, result.abstains, result.edit_skips = {}, {}, {}
    files = write_report(result, tmp_path, context=CONTEXT)
    assert "follow the passage" not in files.markdown_path.read_text()
    assert "follows.png" not in {p.name for p in files.plots}


def _answer(split: str, question: str, *, correct: bool = False) -> GradedAnswer:
    return GradedAnswer(question_id=question, fact_id="f", split=split, mode="rag", question=question,
                        answer="Blue.", correct=correct, cited_sources=(), answer_in_context=None, ttft_ms=1.0,
                        total_ms=2.0)


def test_probe_answers_are_not_listed_or_graded_as_wrong_answers(result, tmp_path):
    # a probe's answer misses the accepted strings on purpose: the passage was edited or removed
    result.answers = [_answer("heldout", "asked held out"), _answer("heldout", "right", correct=True),
                      _answer("edited", "asked edited"), _answer("removed", "asked removed")]
    result.grading = {"rag": {"exact": 0.5, "f1": 0.5, "one_sentence": 1.0}}
    markdown = write_report(result, tmp_path, context=CONTEXT).markdown_path.read_text()
    wrong = markdown.split("## Some wrong answers")[1]
    assert "asked held out" in wrong and "asked edited" not in wrong and "asked removed" not in wrong
    grading = markdown.split("## Grading three ways")[1].split("##")[0]
    assert "| rag | 50.0% (1/2," in grading, "contains-a-string is over the graded splits, as the other gradings"


def test_plots_exist_are_not_blank_and_cover_every_mode(result, tmp_path):
    from matplotlib.image import imread

    drawn = figures(result, CONTEXT)
    assert set(drawn) == {"latency_stages.png", "latency_ttft_total.png", "accuracy.png", "follows.png", "memory.png"}
    footer = footer_text(CONTEXT)
    assert footer == ("model SmolLM2-135M-Instruct-Q4_1.gguf · CPU Test CPU 9000 · 2 threads · "
                      "commit abc1234+dirty · 2026-12-05 21:00 UTC")
    for name, fig in drawn.items():
        assert footer in [t.get_text().replace("\n", " · ") for t in fig.texts], name
    for name in ("latency_stages.png", "latency_ttft_total.png"):
        ticks = [t.get_text() for t in drawn[name].axes[0].get_yticklabels()]
        assert ticks == ["rag", "baked", "hybrid", "rag-spliced", "rag-spliced-cold", "hybrid-spliced"], name
    accuracy_labels = [t.get_text() for ax in drawn["accuracy.png"].axes for t in ax.texts]
    assert "0% (0/8)" in accuracy_labels, "a zero bar is labelled"
    zero = [p for ax in drawn["accuracy.png"].axes for p in ax.patches if p.get_width() < 5]
    assert zero and all(p.get_width() > 0 for p in zero), "a zero bar is drawn as a stub"
    stage_labels = " ".join(t.get_text() for t in drawn["latency_stages.png"].axes[0].texts)
    assert "retrieval 6.0 ms" in stage_labels and "no retrieval" in stage_labels

    files = write_report(result, tmp_path, context=CONTEXT)
    assert {p.name for p in files.plots} == set(drawn)
    for plot in files.plots:
        pixels = imread(plot)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05, f"{plot.name} is blank"


def test_run_metadata_names_the_machine_and_the_code(tmp_path):
    meta = run_metadata(tmp_path / "models" / "m.gguf", threads=3)
    assert set(meta) == {"model", "cpu", "threads", "commit", "date", "platform"}
    assert meta["model"] == "m.gguf" and meta["threads"] == 3 and meta["cpu"]
    assert meta["date"].endswith("UTC")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some   CPU @ 2.0GHz\nflags\t\t: sse\n")
    assert cpu_model(cpuinfo) == "Some CPU @ 2.0GHz"
    assert cpu_model(tmp_path / "missing")  # falls back to the platform


def test_the_commit_is_none_outside_a_checkout_and_dirty_when_changed(tmp_path):
    import shutil
    import subprocess

    assert git_commit(tmp_path) is None
    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    commit = git_commit(repo)
    assert commit and "+dirty" not in commit
    (repo / "a.txt").write_text("b")
    assert git_commit(repo) == f"{commit}+dirty"
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") is None, "a folder inside a checkout is not that checkout's code"


def test_the_spliced_prefill_split_is_tabled_and_drawn_beside_bakeds(result, tmp_path):
    import dataclasses

    split = {"prefill.question_ms": 12.0, "prefill.spliced_positions_ms": 18.0}  # rag-spliced's prefill is 30 ms
    result.latency["rag-spliced"] = dataclasses.replace(result.latency["rag-spliced"], prefill_split_p50_ms=split)
    result.latency["baked"] = dataclasses.replace(result.latency["baked"], prefill_split_p50_ms={
        "prefill.question_ms": 25.0, "prefill.spliced_positions_ms": 0.0})
    stages = write_report(result, tmp_path, context=CONTEXT).markdown_path.read_text().split(
        "## Latency per stage")[1].split("## ")[0]
    # columns: rag, baked, hybrid, rag-spliced, rag-spliced-cold, hybrid-spliced
    assert "| &nbsp;&nbsp;prefill: the question's own tokens | n/a | 25.00 | n/a | 12.00 | n/a | n/a |" in stages
    assert "| &nbsp;&nbsp;prefill: attention over spliced positions | n/a | 0.00 | n/a | 18.00 | n/a | n/a |" in stages
    assert "no passage (same adapter and settings)" in stages
    axis = figures(result, CONTEXT)["latency_stages.png"].axes[0]
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert {"prefill", "prefill: the question's own tokens", "prefill: attention over spliced positions"} <= set(legend)
    spliced_row = 3  # rag-spliced's bar: its prefill drawn as its two parts, no whole-prefill segment
    widths = {c.get_label(): c.patches[spliced_row].get_width() for c in axis.containers}
    assert widths["prefill"] == 0
    assert widths["prefill: the question's own tokens"] == 12.0
    assert widths["prefill: attention over spliced positions"] == 18.0
