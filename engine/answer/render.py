"""How one passage is shown to the model: the one renderer every prompt layout and the grader use.

Retrieved text is untrusted data: a passage is numbered, titled with its document's
name and heading trail, fenced as a quotation and stripped of anything the
tokenizer could read as a control token. The whole-prompt layout
(:mod:`engine.answer.prompt`), the spliced layout (:mod:`engine.answer.spliced_prompt`),
the fine-tune's reader examples and the grader's "does the passage hold the answer"
(:func:`shown_content`) all go through here, so what a model is trained on, shown and
graded against is the same text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# Control-token look-alikes (ChatML and friends) that a document must not smuggle in.
_CONTROL = re.compile(r"<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]")
FENCE = '"""'


class Shown(Protocol):
    """What a passage shows: a ``Passage``, a ``Hit`` or a ``Citation``."""

    @property
    def source(self) -> str: ...
    @property
    def heading(self) -> str: ...
    @property
    def text(self) -> str: ...


def sanitize(text: str) -> str:
    """Remove control-token look-alikes and the quote fence from untrusted text."""
    return _CONTROL.sub(" ", text).replace(FENCE, "''")


@dataclass(frozen=True)
class PromptStyle:
    """Which parts of the RAG prompt are shown, for every layout that renders one.

    The default is what ``Engine`` sends; the other settings exist so that
    ``bench/bench_prompt.py`` can measure what each part buys in accuracy against what it
    costs in prompt tokens, through this renderer rather than a copy of it.

    Attributes:
        name: the document's file name after the label.
        heading: the passage's heading trail after the label (and name).
        fences: the text between fences (:data:`FENCE`), as a quotation.
        scaffold: the user turn says "Sources:" before the passages and "Question:" before
            the question (:mod:`engine.answer.prompt`, :mod:`engine.answer.spliced_prompt`).
    """

    name: bool = True
    heading: bool = True
    fences: bool = True
    scaffold: bool = True


def render_passage(passage: Shown, label: int, style: PromptStyle = PromptStyle()) -> str:
    """``[label] name - heading``, then the passage's text between fences (no trailing separator);
    ``style`` leaves parts out."""
    name = passage.source.rsplit("/", 1)[-1] if style.name else ""
    heading = passage.heading if style.heading else ""
    title = " - ".join(part for part in (name, heading) if part)
    head = f"[{label}] {title}" if title else f"[{label}]"
    text = sanitize(passage.text).strip()
    if style.fences:
        return f"{head}\n{FENCE}\n{text}\n{FENCE}"
    return f"{head}\n{text}" if title else f"{head} {text}"


def shown_content(heading: str, text: str) -> str:
    """The document's own words in a rendered passage: its heading trail (answers may sit there),
    then its text as the fence holds it. What the grader searches for an accepted answer; the
    label and the file name are left out, so a number in them never counts as the answer."""
    return f"{heading}\n{sanitize(text).strip()}"
