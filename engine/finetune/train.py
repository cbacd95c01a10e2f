"""The LoRA training loop: AdamW on the adapter only, seeded, padded batches, progress per step."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import InputError
from engine.finetune._deps import require_torch
from engine.finetune.data import Example
from engine.finetune.torch_model import BlockLayout, LlamaModel

if TYPE_CHECKING:  # torch has no type information mypy can use here; names only
    import torch
else:
    torch = require_torch()
F = torch.nn.functional

_PAD_TOKEN = 0  # never attended to (padding is on the right) and never a target


@dataclass(frozen=True)
class TrainProgress:
    """Reported after every optimizer step (the CLI draws its progress bar from it)."""

    step: int
    total_steps: int
    epoch: int
    loss: float  # mean cross-entropy of this step's target tokens, nats/token
    elapsed_s: float
    eta_s: float  # until the last step or the time budget (max_seconds), whichever comes first


@dataclass(frozen=True)
class TrainReport:
    """What a training run did."""

    steps: int
    epochs: int
    final_loss: float  # mean loss of the last epoch, nats/token
    seconds: float
    tokens_per_s: float  # sequence tokens (context and targets) processed per second
    n_examples: int
    stopped_early: bool


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush float32 denormals to zero while training.

    Activations of this model underflow into denormals (SiLU of large negative
    inputs, attention weights), which make CPU elementwise kernels several times
    slower; llama.cpp's kernels do not care either way.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    # Batch each kind apart (QA pairs are short, document windows long), and within a
    # kind sort each shuffled run of 4 batches by length, so padding stays small.
    batches = []
    for kind in sorted({e.kind for e in examples}):
        group = [e for e in examples if e.kind == kind]
        rng.shuffle(group)
        run = 4 * batch_size
        group = [e for i in range(0, len(group), run) for e in sorted(group[i : i + run], key=lambda e: len(e.tokens))]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BlockLayout | None]:
    """Right-padded tokens, (row, position) of every target's predicting position and its token,
    and the block layout when an example trains passages as spliced blocks."""
    width = max(len(e.tokens) for e in batch)
    tokens = torch.full((len(batch), width), _PAD_TOKEN, dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, example in enumerate(batch):
        tokens[r, : len(example.tokens)] = torch.tensor(example.tokens)
        for i in range(max(1, example.n_context), len(example.tokens)):
            rows.append(r)
            cols.append(i - 1)
            targets.append(example.tokens[i])
    blocks = BlockLayout.of(width, [(e.prefix_len, e.blocks) for e in batch]) if any(e.blocks for e in batch) \
        else None
    return tokens, torch.tensor([rows, cols]), torch.tensor(targets), blocks


def sequence_loss(model: LlamaModel, batch: list[Example]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's target tokens, and the number of tokens processed."""
    tokens, where, targets, blocks = _collate(batch)
    hidden = model.hidden(tokens, blocks)
    # Only positions that predict a target need the (large) vocabulary projection.
    logits = model.project(hidden[where[0], where[1]])
    return F.cross_entropy(logits, targets), int(sum(len(e.tokens) for e in batch))


def train_lora(
    model: LlamaModel,
    examples: list[Example],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    stop_loss: float = 0.0,
    max_seconds: float | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainReport:
    """Train the model's LoRA pairs (the base stays frozen) on ``examples``.

    AdamW, linear warm-up over the first 10 % of steps then cosine decay to 10 %
    of ``lr``, gradient norm clipped to 1. Shuffling is drawn from ``seed``.
    Stops after the first epoch whose mean loss is below ``stop_loss``, or after
    the first step that ends past ``max_seconds`` of training.

    Raises:
        InputError: no examples, or the model has no LoRA pairs to train.
    """
    params = [p for p in model.lora.parameters() if p.requires_grad]
    if not examples:
        raise InputError("no training examples: check the QA file's 'train' split and limit_facts")
    if not params:
        raise InputError("the model has no LoRA pairs to train: give it a LoraConfig with targets")
    rng = random.Random(seed)
    kinds = [e.kind for e in examples]
    per_epoch = sum(math.ceil(kinds.count(kind) / batch_size) for kind in set(kinds))  # batches are of one kind
    total = per_epoch * epochs
    warmup = max(1, total // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    start = time.perf_counter()
    step, n_tokens, epoch_loss, stopped = 0, 0, float("nan"), False
    epoch = 0
    with flush_denormals():
        for epoch in range(1, epochs + 1):
            losses = []
            for batch in _batches(examples, batch_size, rng):
                loss, seen = sequence_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                n_tokens += seen
                losses.append(loss.item())
                elapsed = time.perf_counter() - start
                if progress is not None:
                    eta = elapsed / step * (total - step)
                    if max_seconds is not None:  # the time budget ends training first when it is shorter
                        eta = min(eta, max(0.0, max_seconds - elapsed))
                    progress(TrainProgress(step, total, epoch, losses[-1], elapsed, eta))
                if max_seconds is not None and elapsed > max_seconds:
                    stopped = step < total
                    break
            epoch_loss = sum(losses) / len(losses)
            if stopped or epoch_loss < stop_loss:
                stopped = stopped or epoch < epochs
                break
    model.eval()
    seconds = time.perf_counter() - start
    return TrainReport(
        steps=step,
        epochs=epoch,
        final_loss=epoch_loss,
        seconds=seconds,
        tokens_per_s=n_tokens / seconds if seconds > 0 else 0.0,
        n_examples=len(examples),
        stopped_early=stopped,
    )
