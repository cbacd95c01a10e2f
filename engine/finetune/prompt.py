"""The chat prompt baked answers are trained on, and rendered with, at inference.

Kept free of torch so that the answering code can import it without the
``finetune`` extra. The rendering is exactly what llama.cpp's chat template
produces for SmolLM2 (ChatML) with a system message and the generation prompt.
"""

from __future__ import annotations

#: The one system prompt of baked answering: used for every training example and,
#: by the answering code, at inference. Short on purpose: every token of it is
#: paid for in every training step and every prefill.
BAKED_SYSTEM_PROMPT = "Answer questions about Fenwhistle Aquatronics briefly."

#: The token that ends an assistant turn in ChatML (SmolLM2's end-of-generation token).
END_OF_TURN = "<|im_end|>"


def render_chat(question: str, system: str = BAKED_SYSTEM_PROMPT) -> str:
    """The ChatML prompt for one user question, ending where the assistant's answer starts.

    Args:
        question: the user's message.
        system: the system message (``BAKED_SYSTEM_PROMPT`` unless you know why not).
    """
    return (
        f"<|im_start|>system\n{system}{END_OF_TURN}\n"
        f"<|im_start|>user\n{question}{END_OF_TURN}\n"
        "<|im_start|>assistant\n"
    )


def answer_target(answer: str, style: str = "sentence") -> str:
    """The assistant text a question is trained to produce from its first accepted answer.

    Args:
        answer: the accepted answer string.
        style: ``"sentence"`` ends it with a full stop unless it already ends in
            punctuation; ``"bare"`` keeps it as is.

    Raises:
        ValueError: unknown style.
    """
    answer = answer.strip()
    if style == "bare":
        return answer
    if style == "sentence":
        return answer if answer[-1:] in ".!?" else f"{answer}."
    raise ValueError(f"unknown answer style {style!r}; use 'sentence' or 'bare'")
