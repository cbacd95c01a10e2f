"""How a question and its passages become the one prompt the generator gets, as token ids.

Retrieved text is untrusted data: each passage is numbered, fenced as a quotation
and stripped of anything the tokenizer could read as a control token, and the
system prompt tells the model that instructions inside passages are not to be
followed. The passages are fitted to a token budget counted with the generator's
own tokenizer, so the prompt never overflows the context window; the final prompt
is rendered with the model's chat template and tokenized once, and those ids are
what the generator evaluates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.answer.render import PromptStyle, render_passage
from engine.answer.types import Passage
from engine.generation.chat import RAG_SYSTEM_PROMPT, ChatFormat

#: ``text -> token ids`` exactly as the generator's session would tokenize a prompt
#: (BOS as the model wants, special tokens parsed).
Tokenize = Callable[[str], Sequence[int]]



@dataclass(frozen=True)
class RagPrompt:
    """The prompt as messages and as the token ids the generator gets, and the passages it quotes."""

    messages: tuple[tuple[str, str], ...]
    tokens: tuple[int, ...]
    passages: tuple[Passage, ...]
    dropped_passages: int  # retrieved but left out to respect the budget

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the whole prompt."""
        return len(self.tokens)


def render_sources(passages: Sequence[Passage], style: PromptStyle = PromptStyle()) -> str:
    """The quoted, numbered block of sources as the model sees it."""
    return "\n\n".join(render_passage(passage, passage.label, style) for passage in passages)


def user_message(question: str, passages: Sequence[Passage], style: PromptStyle = PromptStyle()) -> str:
    """The user turn: sources first, the question last (closest to the answer)."""
    if not style.scaffold:
        return f"{render_sources(passages, style)}\n\n{question}" if passages else question
    if not passages:
        return f"Sources: none.\n\nQuestion: {question}"
    return f"Sources:\n\n{render_sources(passages, style)}\n\nQuestion: {question}"


def build_rag_prompt(
    question: str,
    candidates: Sequence[Passage],
    *,
    chat: ChatFormat,
    tokenize: Tokenize,
    count_text: Callable[[str], int],
    budget_tokens: int,
    system_prompt: str = RAG_SYSTEM_PROMPT,
    style: PromptStyle = PromptStyle(),
) -> RagPrompt:
    """Fit as many passages as the budget allows, best first, into one tokenized prompt.

    Args:
        question: the user's question (already checked to be non-empty).
        candidates: passages, best first (labels are reassigned 1..n).
        chat: the model's chat format.
        tokenize: the generator's prompt tokenizer (see :data:`Tokenize`).
        count_text: tokens of a bare string; passages are sized one by one with it, and
            only the final prompt is rendered and tokenized whole.
        budget_tokens: most tokens the whole prompt may take.
        system_prompt: the instructions.
        style: which parts of the prompt are shown (the default is what ``Engine`` sends).

    Returns:
        The prompt; passages that do not fit are dropped (counted in ``dropped_passages``).
        When even the question alone does not fit, the prompt is returned over budget
        and the generator raises ``ContextOverflowError``.
    """
    def tokens_of(passages: Sequence[Passage]) -> tuple[int, ...]:
        return tuple(tokenize(chat.render(_messages(system_prompt, question, passages, style))))

    base = len(tokens_of([]))
    chosen: list[Passage] = []
    estimate = base + (8 if candidates else 0)  # "Sources:" header and separators
    for candidate in candidates:
        relabelled = relabel(candidate, len(chosen) + 1)
        size = count_text(render_sources([relabelled], style)) + 2
        if estimate + size > budget_tokens:
            continue  # a shorter, lower-ranked passage may still fit
        chosen.append(relabelled)
        estimate += size
    tokens = tokens_of(chosen)
    while chosen and len(tokens) > budget_tokens:  # the estimate was short by a few boundary tokens
        chosen.pop()
        tokens = tokens_of(chosen)
    return RagPrompt(_messages(system_prompt, question, chosen, style), tokens, tuple(chosen),
                     len(candidates) - len(chosen))


def relabel(passage: Passage, label: int) -> Passage:
    """``passage`` shown under ``[label]``."""
    return Passage(label, passage.chunk_id, passage.source, passage.span, passage.heading, passage.text)


def _messages(system_prompt: str, question: str, passages: Sequence[Passage],
              style: PromptStyle) -> tuple[tuple[str, str], ...]:
    return (("system", system_prompt), ("user", user_message(question, passages, style)))


_CITED = re.compile(r"\[(\d{1,3})\]")


def cited_labels(answer: str) -> list[int]:
    """The ``[n]`` labels an answer mentions, in order of first mention."""
    seen: list[int] = []
    for match in _CITED.finditer(answer):
        label = int(match.group(1))
        if label not in seen:
            seen.append(label)
    return seen
