"""The public surface: every exported name resolves, is documented, and types are what they say."""

from __future__ import annotations

import typing

import engine


def test_every_public_name_resolves_and_is_documented():
    for name in engine.__all__:
        value = getattr(engine, name)
        if name in ("__version__", "Mode", "StopReason", "SpliceMode"):
            continue
        assert (getattr(value, "__doc__", None) or "").strip(), f"engine.{name} has no docstring"


def test_modes_and_stop_reasons_are_literals():
    assert typing.get_args(engine.Mode) == ("rag", "baked", "hybrid")
    assert typing.get_args(engine.SpliceMode) == ("off", "on", "prefill")
    assert set(typing.get_args(engine.StopReason)) == {"eos", "stop", "length", "context_full"}


def test_answer_timings_compose_the_stage_timings():
    hints = typing.get_type_hints(engine.AnswerTimings, localns={"SearchTimings": engine.SearchTimings})
    assert hints["generation"] is engine.GenerationTimings
    assert hints["search"] == typing.Optional[engine.SearchTimings]
