"""How text becomes tokens for a prompt, an answer, a part of a spliced prompt or a document.

One set of policies for inference and training, so a fine-tuned model is trained on
exactly the tokens it is later prompted with: a prompt parses special-token text such
as ``<|im_start|>`` and gets BOS when the model wants one; an answer parses special
tokens and never gets BOS; a spliced prompt's parts get BOS on the first part only; a
document's text never becomes a control token (a document cannot end a turn).
``Engine`` makes one of its ``Generator`` (:meth:`Tokenizer.of`), the fine-tune recipe one
of the model file (vocabulary and chat template only, no weights used).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InputError, ModelError
from engine.generation.chat import ChatFormat

if TYPE_CHECKING:
    from engine.generation.generator import Generator

#: ``(text, add_special, parse_special) -> token ids``
_Encode = Callable[[str, bool, bool], list[int]]


class Tokenizer:
    """A model's tokenizer and chat template, with the engine's tokenizing policies.

    Args:
        model_path: the model's ``.gguf``; only its vocabulary and chat template are read
            (memory-mapped, not repacked).

    Raises:
        ModelError: the file is missing or llama.cpp cannot load it.
    """

    def __init__(self, model_path: str | os.PathLike[str]) -> None:
        from engine._native import core

        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"base model {path} does not exist: fetch it with `bakeoff models fetch`")
        model = core.Model(str(path), use_extra_bufts=False)

        def render(messages: Sequence[tuple[str, str]], add_assistant: bool) -> str:
            try:
                return model.apply_chat_template(messages, add_assistant=add_assistant)
            except InputError as exc:
                raise ModelError(f"{model.info.path} cannot render a chat ({exc}); fine-tuning renders its "
                                 "examples through the model's own chat template: use a model that has one "
                                 "(an Instruct GGUF)") from None

        self._setup(lambda text, add, parse: model.tokenize(text, add_special=add, parse_special=parse), render,
                    lambda tokens: core.sanitize_utf8(model.detokenize(list(tokens), render_special=True)))

    @classmethod
    def of(cls, generator: Generator) -> Tokenizer:
        """The tokenizer of a loaded generator (its text and message checks included)."""
        made = cls.__new__(cls)
        made._setup(lambda text, add, parse: generator.tokenize(text, add_special=add, parse_special=parse),
                    lambda messages, add: generator.format_chat(messages, add_assistant=add),
                    lambda tokens: generator.detokenize(tokens, render_special=True))
        return made

    def _setup(self, encode: _Encode, render: Callable[[Sequence[tuple[str, str]], bool], str],
               decode: Callable[[Sequence[int]], str]) -> None:
        self._encode = encode
        self._decode = decode
        self.chat = ChatFormat(render)

    def encode_prompt(self, text: str) -> list[int]:
        """Tokens of a whole prompt exactly as inference tokenizes it: special-token text
        such as ``<|im_start|>`` parsed, BOS added when the model wants one."""
        return self._encode(text, True, True)

    def encode_completion(self, text: str) -> list[int]:
        """Tokens of text the model generates after a prompt (an answer and its end of
        turn): special-token text parsed, never a BOS."""
        return self._encode(text, False, True)

    def encode_part(self, text: str, first: bool) -> list[int]:
        """Tokens of one part of a spliced-layout prompt: special-token text parsed, BOS only
        on the ``first`` part (see ``engine.answer.spliced_prompt``)."""
        return self._encode(text, first, True)

    def encode_document(self, text: str) -> list[int]:
        """Tokens of a document's plain text: no BOS, and text that looks like a control
        token stays text."""
        return self._encode(text, False, False)

    def count_text(self, text: str) -> int:
        """Tokens of a bare string (a passage sized for the prompt budget)."""
        return len(self.encode_document(text))

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, control tokens written out; invalid UTF-8 becomes U+FFFD."""
        return self._decode(tokens)
