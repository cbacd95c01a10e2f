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


def render_passage(passage: Shown, label: int) -> str:
    """``[label] name - heading``, then the passage's text between fences (no trailing separator)."""
    name = passage.source.rsplit("/", 1)[-1]
    title = f"{name} - {passage.heading}" if passage.heading else name
    return f"[{label}] {title}\n{FENCE}\n{sanitize(passage.text).strip()}\n{FENCE}"


def shown_content(heading: str, text: str) -> str:
    """The document's own words in a rendered passage: its heading trail (answers may sit there),
    then its text as the fence holds it. What the grader searches for an accepted answer; the
    label and the file name are left out, so a number in them never counts as the answer."""
    return f"{heading}\n{sanitize(text).strip()}"
