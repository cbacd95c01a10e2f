"""The bake-off: the same questions answered from retrieval ("rag") and from a fine-tuned adapter ("baked").

A package on top of :class:`engine.Engine`, one module per concept:

- :mod:`engine.questions.qa`: a knowledge set's questions (``qa.jsonl``) and the one grader;
- :mod:`engine.bakeoff.compare`: both modes graded and timed on those questions;
- :mod:`engine.bakeoff.report`: the comparison written as JSON, Markdown and plots;
- :mod:`engine.bakeoff.pipeline`: ``bakeoff run`` end to end (fetch, index, fine-tune or
  reuse the adapter, compare, report).

The names below are imported on first use, so ``import engine.bakeoff`` loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_exports

_LAZY = {
    "BUNDLED_SET": "engine.questions.qa",
    "Question": "engine.questions.qa",
    "is_correct": "engine.questions.qa",
    "load_questions": "engine.questions.qa",
    "CompareConfig": "engine.bakeoff.compare",
    "ComparisonResult": "engine.bakeoff.compare",
    "run_comparison": "engine.bakeoff.compare",
    "ReportFiles": "engine.bakeoff.report",
    "write_report": "engine.bakeoff.report",
    "FULL": "engine.bakeoff.pipeline",
    "QUICK": "engine.bakeoff.pipeline",
    "RunProfile": "engine.bakeoff.pipeline",
    "RunProgress": "engine.bakeoff.pipeline",
    "RunResult": "engine.bakeoff.pipeline",
    "run_bakeoff": "engine.bakeoff.pipeline",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from engine.bakeoff.compare import CompareConfig, ComparisonResult, run_comparison
    from engine.bakeoff.pipeline import FULL, QUICK, RunProfile, RunProgress, RunResult, run_bakeoff
    from engine.bakeoff.report import ReportFiles, write_report
    from engine.questions.qa import BUNDLED_SET, Question, is_correct, load_questions

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
