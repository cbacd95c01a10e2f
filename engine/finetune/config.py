"""The fine-tune recipe's configuration: small frozen dataclasses, no torch needed to build them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InputError

#: The projections of every block that get a LoRA pair by default (GGUF tensor names
#: without the ``blk.N.`` prefix and ``.weight`` suffix).
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


#: Values of ``FinetuneConfig.document_windows``.
DOCUMENT_WINDOWS = ("all", "answers")

#: Values of ``FinetuneConfig.answer_style``.
ANSWER_STYLES = ("sentence", "bare")

#: Values of ``FinetuneConfig.matmul_dtype``.
MATMUL_DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True)
class LoraConfig:
    """Shape of the LoRA adapter.

    Args:
        rank: inner width of each ``B @ A`` pair.
        alpha: scale numerator; the update is ``alpha / rank * B @ A`` (llama.cpp reads
            ``adapter.lora.alpha`` and applies the same scale).
        dropout: dropout on the LoRA branch's input while training (0 disables it).
        targets: which projections of every block get a pair (names as in ``DEFAULT_TARGETS``).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        """The factor the ``B @ A`` product is multiplied by."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything the recipe needs besides its input and output paths; defaults fit 2 CPU cores.

    Args:
        rank, alpha, dropout, targets: the LoRA adapter (see ``LoraConfig``).
        lr: peak AdamW learning rate (linear warm-up, then cosine decay to 10 %).
        epochs: passes over the training examples (upper bound; see ``stop_loss``).
        batch_size: sequences per optimizer step.
        max_seq_tokens: sequences longer than this are cut (documents) or dropped (QA).
        seed: makes initialization, dropout and shuffling reproducible.
        use_documents: also train next-token prediction on the documents' text (on the
            bundled set this raised held-out accuracy from 38 % to 49 % at 5 epochs).
        document_windows: with ``use_documents``, ``"all"`` windows of the documents, or
            ``"answers"``: only the windows that hold an answer of a trained fact (a
            fraction of the tokens; the quick ``bakeoff run`` profile uses it).
        limit_facts: train on the questions of only N facts (None: all of them).
        spread_facts: with ``limit_facts``, take the N facts spread over the documents
            (``engine.bakeoff.qa.select_facts(spread=True)``) instead of the first N.
        threads: torch CPU threads.
        weight_decay: AdamW weight decay on the LoRA weights.
        stop_loss: stop early once the mean loss of an epoch falls below this (nats/token).
        answer_style: ``"sentence"`` trains "<answer>." as the target, ``"bare"`` just "<answer>".
        max_train_seconds: stop training after the step that crosses this much time
            (None: no limit); the adapter is written either way. The default keeps the
            whole recipe under 20 minutes on a busy 2-core machine; the bundled set's
            5 epochs with documents take about 16 minutes on 2 idle cores.
        matmul_dtype: dtype of the frozen projections' matmuls, ``"bfloat16"`` (about
            twice as fast on CPUs with AVX-512 BF16) or ``"float32"``.
        system_prompt: the system message of every training question. None (the
            default) takes it from the data: ``engine.chat.baked_system_prompt`` of the
            subject in the knowledge set's ``set.json`` (beside ``qa.jsonl``). Either way
            it is written into the adapter (GGUF key ``bakeoff.system_prompt``) so that
            inference asks with the prompt the adapter was trained on.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    lr: float = 2e-3
    epochs: int = 5
    batch_size: int = 8
    max_seq_tokens: int = 160
    seed: int = 0
    use_documents: bool = True
    document_windows: str = "all"
    limit_facts: int | None = None
    spread_facts: bool = False
    threads: int = 2
    weight_decay: float = 0.0
    stop_loss: float = 0.02
    answer_style: str = "sentence"
    max_train_seconds: float | None = 1080.0
    matmul_dtype: str = "bfloat16"
    system_prompt: str | None = None

    def validate(self) -> None:
        """Check every setting before any work is done.

        Raises:
            InputError: a setting is out of range or not one of its allowed values.
        """
        _choice("document_windows", self.document_windows, DOCUMENT_WINDOWS)
        _choice("answer_style", self.answer_style, ANSWER_STYLES)
        _choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        for name in ("rank", "epochs", "batch_size", "threads"):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_seq_tokens", self.max_seq_tokens, 2)
        if self.limit_facts is not None:
            _at_least("limit_facts", self.limit_facts, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        for name in ("alpha", "lr"):
            _number(name, getattr(self, name), positive=True)
        for name in ("weight_decay", "stop_loss"):
            _number(name, getattr(self, name), positive=False)
        _number("dropout", self.dropout, positive=False)
        if self.dropout >= 1:
            raise InputError(f"dropout must be below 1, got {self.dropout!r}")
        if self.max_train_seconds is not None:
            _number("max_train_seconds", self.max_train_seconds, positive=True)
        if isinstance(self.targets, str) or not self.targets or set(self.targets) - set(DEFAULT_TARGETS):
            raise InputError(f"targets must be a non-empty tuple of projections among {', '.join(DEFAULT_TARGETS)}, "
                             f"got {self.targets!r}")
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str)
                                               or not self.system_prompt.strip()):
            raise InputError(f"system_prompt must be a non-empty string or None (taken from the knowledge set), "
                             f"got {self.system_prompt!r}")

    @property
    def lora(self) -> LoraConfig:
        """The adapter part of this configuration."""
        return LoraConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=self.targets)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InputError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
