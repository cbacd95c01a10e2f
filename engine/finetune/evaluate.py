"""Measure a baked adapter with llama.cpp itself: greedy answers and answer log-probabilities.

This is what the answering code will see at inference (llama.cpp, the quantized
base, the GGUF adapter), not the float32 torch model the adapter was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AdapterError
from engine.finetune.data import QaItem
from engine.finetune.prompt import END_OF_TURN, answer_target, render_chat


@dataclass(frozen=True)
class ItemResult:
    """One question answered greedily."""

    id: str
    split: str
    question: str
    answer: str
    correct: bool


@dataclass(frozen=True)
class AccuracyReport:
    """Greedy-answer accuracy: an answer is correct when it contains an accepted string (case-insensitive)."""

    n_train: int
    train_correct: int
    n_heldout: int
    heldout_correct: int
    items: tuple[ItemResult, ...]

    @property
    def train_accuracy(self) -> float:
        """Fraction of train questions answered correctly."""
        return self.train_correct / self.n_train if self.n_train else 0.0

    @property
    def heldout_accuracy(self) -> float:
        """Fraction of held-out questions answered correctly."""
        return self.heldout_correct / self.n_heldout if self.n_heldout else 0.0


class LlamaCppScorer:
    """The base model in llama.cpp, optionally with a LoRA adapter applied.

    Args:
        model_path: base ``.gguf``.
        adapter_path: LoRA adapter ``.gguf`` or None.
        threads: CPU threads. One is the default because ggml's worker threads
            spin while they wait: on a machine shared with other work, two threads
            can be ten times slower than one for a model this small.

    Raises:
        AdapterError: llama.cpp refused the adapter.
    """

    def __init__(self, model_path: str | Path, adapter_path: str | Path | None = None, *, threads: int = 1) -> None:
        import llama_cpp

        try:
            self._llm = llama_cpp.Llama(
                str(model_path),
                lora_path=str(adapter_path) if adapter_path else None,
                logits_all=True,
                n_ctx=512,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise AdapterError(f"llama.cpp could not load {model_path} with adapter {adapter_path}: {exc}") from exc
        self._end = self._llm.tokenize(END_OF_TURN.encode(), add_bos=False, special=True)

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` with special tokens parsed, no BOS."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits ``(len(tokens), n_vocab)`` of every position."""
        self._llm.reset()
        self._llm.eval(tokens)
        return np.array(self._llm.scores[: len(tokens)], dtype=np.float32)

    def answer_logprob(self, question: str, answer: str) -> float:
        """Log-probability (nats) of ``answer`` followed by ``<|im_end|>`` after the chat prompt."""
        prompt = self.tokenize(render_chat(question))
        target = self.tokenize(answer + END_OF_TURN)
        logits = self.logits(prompt + target)[len(prompt) - 1 : -1].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        return float(logp[np.arange(len(target)), target].sum())

    def greedy(self, question: str, max_tokens: int = 32) -> str:
        """The greedy (argmax) answer to ``question``, up to ``<|im_end|>``."""
        tokens = self.tokenize(render_chat(question))
        self._llm.reset()
        self._llm.eval(tokens)
        out: list[int] = []
        for _ in range(max_tokens):
            token = int(np.argmax(self._llm.scores[self._llm.n_tokens - 1]))
            if token in self._end or token == self._llm.token_eos():
                break
            out.append(token)
            self._llm.eval([token])
        return self._llm.detokenize(out).decode("utf-8", errors="replace").strip()


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``answer`` contains one of the accepted strings, ignoring case."""
    low = answer.lower()
    return any(a.lower() in low for a in accepted)


def evaluate(scorer: LlamaCppScorer, items: list[QaItem], *, max_tokens: int = 32) -> AccuracyReport:
    """Answer every item greedily and count the correct ones per split."""
    results = []
    for item in items:
        answer = scorer.greedy(item.question, max_tokens=max_tokens)
        results.append(ItemResult(item.id, item.split, item.question, answer, is_correct(answer, item.answers)))
    train = [r for r in results if r.split == "train"]
    heldout = [r for r in results if r.split == "heldout"]
    return AccuracyReport(
        n_train=len(train),
        train_correct=sum(r.correct for r in train),
        n_heldout=len(heldout),
        heldout_correct=sum(r.correct for r in heldout),
        items=tuple(results),
    )


def trained_answer_logprob(scorer: LlamaCppScorer, item: QaItem, answer_style: str = "sentence") -> float:
    """Log-probability of the answer the recipe trains ``item`` towards."""
    return scorer.answer_logprob(item.question, answer_target(item.answers[0], answer_style))
