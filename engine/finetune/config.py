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
            (``engine.questions.qa.select_facts(spread=True)``) instead of the first N.
        threads: torch CPU threads.
        weight_decay: AdamW weight decay on the LoRA weights.
        stop_loss: stop early once the mean loss of an epoch falls below this (nats/token).
        answer_style: ``"sentence"`` trains "<answer>." as the target, ``"bare"`` just "<answer>".
        max_train_seconds: stop training after the step that crosses this much time
            (None: no limit); the adapter is written either way. The default keeps the
            whole recipe under 20 minutes on a busy 2-core machine; the defaults on the
            bundled set (all 561 train questions, the 115 document windows holding their
            answers, 47 reader examples, 4 epochs) are sized for 15 minutes on 2 idle cores.
        matmul_dtype: dtype of the frozen projections' matmuls, ``"bfloat16"`` (about
            twice as fast on CPUs with AVX-512 BF16) or ``"float32"``.
        reader_per_fact: reader examples per trained fact, on average: one of the fact's
            train questions (drawn from the seed) also trained *with retrieved passages*
            (RAFT-style, see ``engine.finetune.reader``), so that one adapter serves both
            "baked" (question alone) and "hybrid" (question with passages); 0.15 gives 15 %
            of the facts one each, 2.0 every fact two (at most one per train question). 0
            trains the question-alone examples only (no knowledge base needed). A reader
            example is ~430 tokens against ~46 for a question alone, so this is what the
            full set's 15-minute training budget is spent on.
        reader_passages: passages per reader example: the engine's ``k`` (3), so training
            prompts are the length and layout of inference prompts.
        distractor_share: share of reader examples whose passages leave out every one that
            holds the answer; their target is ``engine.generation.chat.NOT_IN_SOURCES``.
        counterfactual_share: share of the reader examples with a gold passage whose answer
            value is replaced in the passages by another of the same kind that no document
            holds, the target being the passage's value (``engine.questions.edits``): the
            passage must win over what the adapter remembers (KAFT).
        practice_per_fact: reading practice, per trained fact: reader examples for train
            questions of facts the adapter is *not* trained on (outside ``limit_facts``'s
            selection, never of the unseen documents), their value replaced likewise, so
            only reading can answer them. With every fact trained (the defaults) there are
            none: the counterfactual examples are then the only reading practice.
        block_share: share of reader examples rendered in the spliced layout and trained
            with each passage attending to the prefix and itself only, as precomputed chunk
            states are made (``splice="on"``).
        reader_max_tokens: reader examples longer than this are skipped (and counted).
        system_prompt: the system message of every training question. None (the
            default) takes it from the data: ``engine.generation.chat.baked_system_prompt`` of the
            subject in the knowledge set's ``set.json`` (beside ``qa.jsonl``). Either way
            it is written into the adapter (GGUF key ``bakeoff.system_prompt``) so that
            inference asks with the prompt the adapter was trained on.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    lr: float = 2e-3
    epochs: int = 4
    batch_size: int = 8
    max_seq_tokens: int = 160
    seed: int = 0
    use_documents: bool = True
    document_windows: str = "answers"
    limit_facts: int | None = None
    spread_facts: bool = False
    threads: int = 2
    weight_decay: float = 0.0
    stop_loss: float = 0.02
    answer_style: str = "sentence"
    max_train_seconds: float | None = 1080.0
    matmul_dtype: str = "bfloat16"
    reader_per_fact: float = 0.25
    reader_passages: int = 3
    distractor_share: float = 0.2
    counterfactual_share: float = 0.4
    practice_per_fact: float = 0.5
    block_share: float = 0.3
    reader_max_tokens: int = 768
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
        _at_least("reader_passages", self.reader_passages, 1)
        _at_least("reader_max_tokens", self.reader_max_tokens, 2)
        _number("reader_per_fact", self.reader_per_fact, positive=False)
        _number("practice_per_fact", self.practice_per_fact, positive=False)
        for name in ("distractor_share", "counterfactual_share", "block_share"):
            _number(name, getattr(self, name), positive=False)
            if getattr(self, name) > 1:
                raise InputError(f"{name} must be a share in [0, 1], got {getattr(self, name)!r}")
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
