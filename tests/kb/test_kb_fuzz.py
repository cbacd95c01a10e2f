"""Fuzz: a damaged knowledge base file is a typed error (or, if nothing checkable changed, a search).

Each case truncates or flips one byte of one file of a real knowledge base (six of the
bundled documents, embedded with the real embedder), then opens and searches it in a child
process with ``verify="size"`` and ``verify="auto"``. A case fails if the child dies by
a signal, hangs, raises anything but an ``EngineError``, or searches damage it should
have seen: any damaged data file with ``"auto"`` (its sha256 catches every change), and
``ids.npy`` or ``vectors.npy`` with other hits than the undamaged files give, in any mode
(they are checked against the graph).

Seeded and time-bounded: ``BAKEOFF_KB_FUZZ_SEED`` (default 12) picks the cases,
``BAKEOFF_KB_FUZZ_SECONDS`` (default 30) bounds the time spent on them; the same seed
runs the same cases in the same order, a longer budget only runs more of them. The
knowledge base is built with M=4, so that a quarter of the graph's elements have
upper-level lists and damage lands there too.
"""

from __future__ import annotations

import os

import pytest

from engine.robustness.kb_fuzz import build_fuzz_kb, fuzz_kb


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    return build_fuzz_kb(tmp_path_factory.mktemp("fuzz") / "kb", embedder)


def test_damaged_files_are_typed_errors_never_crashes(built, tmp_path, embedder_dir):
    seed = int(os.environ.get("BAKEOFF_KB_FUZZ_SEED", "12"))
    budget_s = float(os.environ.get("BAKEOFF_KB_FUZZ_SECONDS", "30"))
    report = fuzz_kb(built, tmp_path, seconds=budget_s, seed=seed, cache_dir=embedder_dir.parent)
    print(f"kb fuzz, seed {seed}, {budget_s:.0f} s: {report}")
    assert report.cases >= 20, report
    assert not report.failures, "\n".join(str(f) for f in report.failures[:20])
