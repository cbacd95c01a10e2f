"""The answer layer: passages, the prompt, and the answer with its citations and timings."""

from engine.answer.layer import AnswerLayer, PreparedAnswer
from engine.answer.passages import CONTEXTS, Context
from engine.answer.types import MODES, Answer, AnswerTimings, Citation, Mode, Passage, StopReason

__all__ = ["CONTEXTS", "MODES", "Answer", "AnswerLayer", "AnswerTimings", "Citation", "Context", "Mode", "Passage",
           "PreparedAnswer", "StopReason"]
