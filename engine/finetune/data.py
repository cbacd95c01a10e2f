"""Training examples from the knowledge set: chat-formatted QA pairs and document chunks.

Tokens come from the GGUF's own vocabulary through llama.cpp (``vocab_only``), so
they are exactly the tokens llama.cpp feeds the model at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError, ModelError
from engine.finetune.prompt import END_OF_TURN, answer_target, render_chat
from engine.qa import Question as QaItem
from engine.qa import is_correct, load_questions


@dataclass(frozen=True)
class Example:
    """One training sequence; the loss covers ``tokens[n_context:]`` (predicted from what precedes)."""

    tokens: tuple[int, ...]
    n_context: int
    kind: str  # "qa" or "doc"


def load_qa(qa_path: str | Path) -> list[QaItem]:
    """Read ``qa.jsonl`` (see ``engine.qa``); raises ``InputError`` on a missing file or bad line."""
    return load_questions(qa_path)


class Tokenizer:
    """The GGUF model's own tokenizer, through llama.cpp (vocabulary only, no weights).

    Raises:
        ModelError: llama.cpp cannot read the model file.
    """

    def __init__(self, model_path: str | Path) -> None:
        import llama_cpp

        try:
            self._llm = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp cannot read the vocabulary of {model_path}: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        """Tokens of ``text``, special tokens such as ``<|im_start|>`` parsed, no BOS added."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, tokens: list[int]) -> str:
        """Text of ``tokens``."""
        return self._llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")


def qa_examples(items: list[QaItem], tokenizer: Tokenizer, *, answer_style: str, max_tokens: int) -> list[Example]:
    """Examples for the TRAIN items: chat prompt, then the target answer and ``<|im_end|>``.

    The prompt and the answer are tokenized separately, as at inference (the
    prompt is tokenized whole, the answer is generated token by token).

    Raises:
        InputError: an example is longer than ``max_tokens``.
    """
    out = []
    for item in items:
        if item.split != "train":
            continue
        prompt = tokenizer.encode(render_chat(item.question))
        answer = tokenizer.encode(answer_target(item.answers[0], answer_style) + END_OF_TURN)
        if len(prompt) + len(answer) > max_tokens:
            raise InputError(
                f"question {item.id} needs {len(prompt) + len(answer)} tokens, more than "
                f"max_seq_tokens={max_tokens}; raise max_seq_tokens"
            )
        out.append(Example(tokens=tuple(prompt + answer), n_context=len(prompt), kind="qa"))
    return out


def document_examples(
    docs_dir: str | Path, tokenizer: Tokenizer, *, max_tokens: int, only: set[str] | None = None,
    holding: Sequence[str] | None = None,
) -> list[Example]:
    """Next-token examples from the ``*.md`` under ``docs_dir``, cut into windows of ``max_tokens``.

    Windows overlap by a quarter so that no sentence is only ever seen cut in two.

    Args:
        only: file names to keep (e.g. the sources of the selected facts); None keeps all.
        holding: keep only the windows whose text holds one of these strings (graded
            like an answer, ``engine.qa.is_correct``); None keeps every window.

    Raises:
        InputError: ``docs_dir`` is not a folder of Markdown files.
    """
    paths = [p for p in sorted(Path(docs_dir).glob("*.md")) if only is None or p.name in only]
    if not paths:
        raise InputError(f"{docs_dir} holds no .md documents (kept: {only}); pass the knowledge set's docs folder")
    stride = max(1, max_tokens * 3 // 4)
    accepted = tuple(holding) if holding is not None else None
    out = []
    for path in paths:
        tokens = tokenizer.encode(path.read_text(encoding="utf-8"))
        for start in range(0, max(1, len(tokens) - max_tokens + stride), stride):
            window = tokens[start : start + max_tokens]
            if len(window) > 1 and (accepted is None or is_correct(tokenizer.decode(window), accepted)):
                out.append(Example(tokens=tuple(window), n_context=1, kind="doc"))
    return out
