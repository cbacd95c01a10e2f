"""The fine-tune recipe's configuration: small frozen dataclasses, no torch needed to build them."""

from __future__ import annotations

from dataclasses import dataclass

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
            (``engine.qa.select_facts(spread=True)``) instead of the first N.
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

    @property
    def lora(self) -> LoraConfig:
        """The adapter part of this configuration."""
        return LoraConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=self.targets)
