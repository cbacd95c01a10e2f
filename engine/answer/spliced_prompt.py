"""The RAG prompt laid out for chunk-KV splicing: a shared prefix, one block per chunk, a live tail.

::

    [system prompt, user turn opener, "Sources:\\n\\n"]   shared prefix: the same for every question
    [17] name - heading\\n\"\"\"\\ntext\\n\"\"\"\\n\\n              one block per passage: its K/V can be precomputed
    [42] ...                                             (a chunk state, engine.generation.kv_cache)
    Question: ...<end of turn><assistant opener>          live tail: always evaluated

Each passage's label is its chunk id, not its rank: a block then reads the same in
every slot, so one precomputed state serves wherever the chunk lands, and nothing
but the tail is evaluated per question (labels 1..k between blocks would cost a
decode each). Each part is tokenized on its own; the text is exactly what the chat
template renders for the same messages, but token boundaries between parts can
differ from tokenizing the whole (e.g. "\\n\\n" vs "\\n","\\n"), so the splice's
accuracy is always compared with a full prefill of *these* tokens ("prefill"
splice mode), never with the whole-prompt layout of :mod:`engine.answer.prompt`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.answer.prompt import relabel
from engine.answer.render import PromptStyle, render_passage
from engine.answer.types import Passage
from engine.errors import InputError
from engine.generation.chat import RAG_SYSTEM_PROMPT, ChatFormat

#: ``text -> token ids`` of one part of the prompt: BOS only when ``first`` (the
#: shared prefix), special tokens parsed as the whole-prompt path parses them.
TokenizePart = Callable[[str, bool], Sequence[int]]

_HEADER = "Sources:\n\n"
_MARK = "\u2063BAKEOFF-BODY\u2063"  # invisible separator: never in a template, never in sanitized text


@dataclass(frozen=True)
class ChunkBlock:
    """One passage's block: prompt tokens ``[start, start + len(tokens))``, with the text they encode."""

    chunk_id: int
    start: int
    text: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class SplicedPrompt:
    """The whole prompt as token ids, with where its shared prefix ends and its blocks sit."""

    tokens: tuple[int, ...]
    prefix: tuple[int, ...]  # tokens[:len(prefix)], the same for every question
    blocks: tuple[ChunkBlock, ...]
    passages: tuple[Passage, ...]
    dropped_passages: int


class SplicedLayout:
    """Renders and tokenizes prompts in the spliced layout for one chat format and system prompt.

    Raises:
        InputError: the model's chat template does not carry the user message through
            verbatim, so the parts would not add up to what the template renders.
    """

    def __init__(self, chat: ChatFormat, tokenize: TokenizePart, *, system_prompt: str = RAG_SYSTEM_PROMPT,
                 style: PromptStyle = PromptStyle()) -> None:
        self._chat = chat
        self._tokenize = tokenize
        self.system_prompt = system_prompt
        self.style = style
        header = _HEADER if style.scaffold else ""  # the same user turn as engine.answer.prompt.user_message
        rendered = chat.render([("system", system_prompt), ("user", header + _MARK)])
        if rendered.count(_MARK) != 1:
            raise InputError("this model's chat template rewrites the user message, so a prompt cannot be split "
                             "into precomputed parts: use splice='off'")
        head, self._tail = rendered.split(_MARK)
        self.prefix_text = head
        self.prefix = tuple(tokenize(head, True))

    def block_text(self, passage: Passage) -> str:
        """The text of one passage's block (label = chunk id), trailing separator included."""
        return render_passage(passage, passage.chunk_id, self.style) + "\n\n"

    def tokenize_block(self, text: str) -> tuple[int, ...]:
        """Token ids of a block's text, tokenized on its own."""
        return tuple(self._tokenize(text, False))

    def tail_text(self, question: str) -> str:
        """The live part: the question and the template's end of the user turn."""
        return f"Question: {question}{self._tail}" if self.style.scaffold else f"{question}{self._tail}"

    def text(self, question: str, passages: Sequence[Passage]) -> str:
        """The whole prompt as text: exactly what the chat template renders for these messages."""
        return self.prefix_text + "".join(self.block_text(p) for p in passages) + self.tail_text(question)

    def build(self, question: str, candidates: Sequence[Passage], *, budget_tokens: int) -> SplicedPrompt:
        """As many of ``candidates`` (best first) as fit ``budget_tokens``, each block tokenized on its own.

        A candidate that does not fit is skipped (a shorter one after it may still fit).
        When even the question alone does not fit, the prompt is returned over budget and
        the generator raises ``ContextOverflowError``.
        """
        tail = tuple(self._tokenize(self.tail_text(question), False))
        used = len(self.prefix) + len(tail)
        chosen: list[tuple[Passage, str, tuple[int, ...]]] = []
        for candidate in candidates:
            passage = relabel(candidate, candidate.chunk_id)
            text = self.block_text(passage)
            tokens = self.tokenize_block(text)
            if used + len(tokens) > budget_tokens:
                continue
            chosen.append((passage, text, tokens))
            used += len(tokens)
        blocks = []
        all_tokens = list(self.prefix)
        for passage, text, tokens in chosen:
            blocks.append(ChunkBlock(passage.chunk_id, len(all_tokens), text, tokens))
            all_tokens.extend(tokens)
        all_tokens.extend(tail)
        return SplicedPrompt(tuple(all_tokens), self.prefix, tuple(blocks), tuple(p for p, _, _ in chosen),
                             len(candidates) - len(chosen))
