"""Training examples from the knowledge set: chat-formatted QA pairs and document chunks.

Text is rendered and tokenized by the GGUF model itself through ``engine._core``
(its chat template, its vocabulary), with the calls inference makes, so every
training prompt is token for token what ``Engine`` later feeds the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DocumentError, InputError
from engine.finetune.config import ANSWER_STYLES
from engine.generation.chat import baked_system_prompt
from engine.generation.tokenizer import Tokenizer
from engine.questions.qa import Question as QaItem
from engine.questions.qa import is_correct, load_questions, set_subject


@dataclass(frozen=True)
class Example:
    """One training sequence; the loss covers ``tokens[n_context:]`` (predicted from what precedes)."""

    tokens: tuple[int, ...]
    n_context: int
    kind: str  # "qa", "doc", "reader" (question with passages) or "reader-blocks" (the same, spliced layout)
    # "reader-blocks": where the shared prefix ends and each passage block lies, (start, length):
    # trained with each block attending to the prefix and itself only, as a spliced chunk state was made
    prefix_len: int = 0
    blocks: tuple[tuple[int, int], ...] = ()


def load_qa(qa_path: str | os.PathLike[str]) -> list[QaItem]:
    """Read ``qa.jsonl`` (see ``engine.questions.qa``); raises ``InputError`` on a missing file or bad line."""
    return load_questions(qa_path)


def training_system_prompt(qa_path: str | os.PathLike[str], explicit: str | None = None) -> str:
    """The system prompt a knowledge set's adapter is trained with.

    ``explicit`` when given; otherwise the baked prompt naming the set's subject (the
    ``set.json`` beside ``qa_path``), e.g. "Answer questions about Fenwhistle Aquatronics
    briefly." for the bundled set.

    Raises:
        InputError: the set's ``set.json`` is not valid.
    """
    return explicit if explicit is not None else baked_system_prompt(set_subject(Path(qa_path).parent))


def answer_target(answer: str, style: str = "sentence") -> str:
    """The assistant text a question is trained to produce from its first accepted answer.

    Args:
        answer: the accepted answer string.
        style: ``"sentence"`` ends it with a full stop unless it already ends in
            punctuation; ``"bare"`` keeps it as is.

    Raises:
        InputError: unknown style.
    """
    answer = answer.strip()
    if style == "bare":
        return answer
    if style == "sentence":
        return answer if answer[-1:] in ".!?" else f"{answer}."
    raise InputError(f"unknown answer style {style!r}; use one of {', '.join(ANSWER_STYLES)}")


def qa_examples(items: list[QaItem], tokenizer: Tokenizer, *, system_prompt: str, answer_style: str,
                max_tokens: int) -> list[Example]:
    """Examples for the TRAIN items: the chat prompt, then the target answer and the end of turn.

    The prompt is rendered by the model's chat template and tokenized whole, as
    inference does; the answer is tokenized apart, as it is generated after the prompt.

    Raises:
        InputError: an example is longer than ``max_tokens``, or an unknown answer style.
    """
    out = []
    for item in items:
        if item.split != "train":
            continue
        prompt = tokenizer.encode_prompt(tokenizer.chat.prompt(system_prompt, item.question))
        answer = tokenizer.encode_completion(tokenizer.chat.completion(answer_target(item.answers[0], answer_style)))
        if len(prompt) + len(answer) > max_tokens:
            raise InputError(
                f"question {item.id} needs {len(prompt) + len(answer)} tokens, more than "
                f"max_seq_tokens={max_tokens}; raise max_seq_tokens"
            )
        out.append(Example(tokens=tuple(prompt + answer), n_context=len(prompt), kind="qa"))
    return out


def document_examples(
    docs_dir: str | os.PathLike[str], tokenizer: Tokenizer, *, max_tokens: int, only: set[str] | None = None,
    holding: Sequence[str] | None = None, exclude: frozenset[str] = frozenset(),
) -> list[Example]:
    """Next-token examples from the ``*.md`` under ``docs_dir``, cut into windows of ``max_tokens``.

    Windows overlap by a quarter so that no sentence is only ever seen cut in two.

    Args:
        only: file names to keep (e.g. the sources of the selected facts); None keeps all.
        exclude: file names never to train on (the set's unseen documents).
        holding: keep only the windows whose text holds one of these strings (graded
            like an answer, ``engine.questions.qa.is_correct``); None keeps every window.

    Raises:
        InputError: ``docs_dir`` is not a folder of Markdown files.
        DocumentError: a document is not UTF-8 text.
    """
    paths = [p for p in sorted(Path(docs_dir).glob("*.md"))
             if (only is None or p.name in only) and p.name not in exclude]
    if not paths:
        raise InputError(f"{docs_dir} holds no .md documents (kept: {only}); pass the knowledge set's docs folder")
    stride = max(1, max_tokens * 3 // 4)
    accepted = tuple(holding) if holding is not None else None
    out = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                                "save it as UTF-8 or move it out of the docs folder") from None
        tokens = tokenizer.encode_document(text)
        for start in range(0, max(1, len(tokens) - max_tokens + stride), stride):
            window = tokens[start : start + max_tokens]
            if len(window) > 1 and (accepted is None or is_correct(tokenizer.decode(window), accepted)):
                out.append(Example(tokens=tuple(window), n_context=1, kind="doc"))
    return out
