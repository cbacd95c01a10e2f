"""Fixtures of the fine-tune tests: the base model dequantized once, the bundled knowledge set,
and llama.cpp as ``Engine`` runs it (``engine.Generator``) to measure what an adapter does there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from engine.questions.qa import BUNDLED_SET, Question, is_correct


@pytest.fixture(scope="session")
def base_weights(generator_model_path: Path):
    """SmolLM2-135M-Instruct's tensors as float32 torch tensors (about 5 s to dequantize)."""
    pytest.importorskip("torch")
    from engine.finetune.gguf_weights import load_base

    return load_base(generator_model_path)


@pytest.fixture(scope="session")
def kb_dir() -> Path:
    """The bundled knowledge set: ``docs/*.md``, ``qa.jsonl`` and ``set.json``."""
    return BUNDLED_SET


class ServedModel:
    """A GGUF model in ``engine.Generator``, with or without one adapter: greedy answers
    and log-probabilities of given tokens, as the answering code would get them.

    One thread: ggml's worker threads spin while they wait, so on a machine shared
    with other work two threads can be ten times slower than one for a model this small.
    """

    def __init__(self, model_path: Path, adapter_path: Path | None = None) -> None:
        from engine import Generator

        self.generator = Generator(model_path, n_ctx=512, n_threads=1)
        self.adapters: Mapping[str, float] = (
            {self.generator.load_adapter(adapter_path): 1.0} if adapter_path is not None else {})

    def prompt_tokens(self, system: str, question: str) -> list[int]:
        """The tokens the generator feeds for ``question`` asked under ``system``."""
        text = self.generator.format_chat([("system", system), ("user", question)])
        return self.generator.tokenize(text, add_special=True, parse_special=True)

    def answer(self, system: str, question: str, *, max_tokens: int = 32) -> str:
        """The greedy answer, up to the model's end of turn."""
        out = self.generator.generate([("system", system), ("user", question)], max_tokens=max_tokens,
                                      adapters=self.adapters)
        return out.text.strip()

    def log_prob(self, context: Sequence[int], continuation: Sequence[int]) -> float:
        """Sum of the natural-log probabilities of ``continuation`` after ``context``."""
        return self.generator.log_prob(context, continuation, adapters=self.adapters)

    def answer_log_prob(self, system: str, question: str, answer: str, end_of_turn: str) -> float:
        """Log-probability (nats) of ``answer`` and the end of turn, after the chat prompt."""
        target = self.generator.tokenize(answer + end_of_turn, add_special=False, parse_special=True)
        return self.log_prob(self.prompt_tokens(system, question), target)

    def candidate_log_probs(self, tokens: Sequence[int], candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``[i][j]``: log-probability of token ``candidates[i][j]`` right after ``tokens[: i + 1]``."""
        return [np.array([self.log_prob(tokens[: i + 1], [c]) for c in row]) for i, row in enumerate(candidates)]

    def accuracy(self, system: str, items: Sequence[Question]) -> float:
        """Fraction of ``items`` answered correctly (``engine.questions.qa.is_correct``, the one grader)."""
        return sum(is_correct(self.answer(system, item.question), item.answers) for item in items) / len(items)


@pytest.fixture(scope="session")
def served():
    """Build a :class:`ServedModel`: ``served(model_path, adapter_path=None)``."""
    return ServedModel


class Parity:
    """Compare a torch model with llama.cpp on the log-probabilities of the likely tokens
    at every position (llama.cpp gives log-probabilities of chosen tokens, not whole rows)."""

    @staticmethod
    def torch_log_probs(model, tokens: Sequence[int]) -> np.ndarray:
        """``(len(tokens), n_vocab)`` next-token log-probabilities of a torch ``LlamaModel``."""
        import torch

        with torch.no_grad():
            logits = model(torch.tensor([list(tokens)]))[0].double()
        return torch.log_softmax(logits, -1).numpy()

    @staticmethod
    def candidates(tokens: Sequence[int], *log_probs: np.ndarray, top: int = 6) -> list[list[int]]:
        """Per position: the ``top`` most likely tokens under each of ``log_probs``, and the next token."""
        rows = []
        for i in range(len(tokens)):
            row = {int(t) for lp in log_probs for t in np.argsort(lp[i])[-top:]}
            if i + 1 < len(tokens):
                row.add(int(tokens[i + 1]))
            rows.append(sorted(row))
        return rows

    @staticmethod
    def gather(log_probs: np.ndarray, rows: list[list[int]]) -> list[np.ndarray]:
        """Per position, the torch log-probabilities of that position's candidates."""
        return [log_probs[i, row] for i, row in enumerate(rows)]


@pytest.fixture(scope="session")
def parity() -> type[Parity]:
    """The :class:`Parity` helpers."""
    return Parity
