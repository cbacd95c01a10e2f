"""One answer graded: asked in a mode, then checked against the accepted strings (correct, exact,
token F1, one sentence) and, for modes that read passages, whether a passage given held the
answer and what the answer cites. The comparison, the probes and freshness all grade through
:func:`grade`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.answer.types import SpliceMode
from engine.questions.qa import Question, exact_match, holds_answer, is_correct, is_one_sentence, token_f1

if TYPE_CHECKING:  # the engine (native core, ONNX Runtime) loads when a comparison runs, not on import
    from engine.answer import Mode
    from engine.facade import Engine


@dataclass(frozen=True)
class GradedAnswer:
    """One answer and whether it contains an accepted string."""

    question_id: str
    fact_id: str
    split: str  # one of SPLITS, or a probe's: "edited", "removed" (engine.bakeoff.probes)
    mode: str
    question: str
    answer: str
    correct: bool
    cited_sources: tuple[str, ...]
    answer_in_context: bool | None  # rag: a passage given to the model holds an accepted string
    ttft_ms: float
    total_ms: float
    exact: bool = False  # the normalised answer equals a normalised accepted string (qa.exact_match)
    f1: float = 0.0  # best token F1 against the accepted strings (qa.token_f1)
    one_sentence: bool = False
    cites_label: bool | None = None  # rag: the answer names the [label] of a passage it was given
    citation_precision: float | None = None  # rag: share of the passages it cites that hold an accepted string


def grade(engine: Engine, q: Question, mode: Mode, split: str, accepted: tuple[str, ...], max_tokens: int,
           *, passages: Sequence | None = None, label: str | None = None, splice: SpliceMode = "off") -> GradedAnswer:
    """Ask ``q`` in ``mode`` (from ``passages`` when given) and grade it; ``label`` names the mode in the results."""
    answer = engine.ask(q.question, mode, max_tokens=max_tokens, passages=passages,
                        splice=splice if mode != "baked" else None)
    in_context = cites = precision = None
    if mode != "baked":
        in_context = any(holds_answer(c, accepted) for c in answer.citations)
        cited = [c for c in answer.citations if c.cited]
        cites = bool(cited)
        if cited:
            precision = sum(holds_answer(c, accepted) for c in cited) / len(cited)
    return GradedAnswer(q.id, q.fact_id, split, label or mode, q.question, answer.text,
                        is_correct(answer.text, accepted), tuple(os.path.basename(c.source) for c in answer.citations),
                        in_context, answer.timings.ttft_ms, answer.timings.total_ms,
                        exact_match(answer.text, accepted), token_f1(answer.text, accepted),
                        is_one_sentence(answer.text), cites, precision)
