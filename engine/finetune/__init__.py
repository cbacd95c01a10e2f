"""Bake knowledge into a LoRA adapter: the fine-tune half of the bake-off.

``finetune()`` trains a LoRA adapter on the knowledge set's TRAIN questions,
with a small torch re-implementation of llama.cpp's Llama graph over the base
GGUF's own (dequantized) tensors, and writes it as a GGUF adapter that
llama.cpp loads next to the quantized base model.

Training examples are rendered by the base model's own chat template and
tokenized by its own vocabulary, through ``engine._core`` and ``engine.generation.chat``, as
inference does; the system prompt they are trained with comes from the knowledge
set (``set.json``) and is stored in the adapter under ``SYSTEM_PROMPT_KEY``.

PyTorch and the gguf package are the optional ``finetune`` extra; this package
imports without them (the config types and ``SYSTEM_PROMPT_KEY`` need nothing),
and the training entry points raise ``engine.errors.MissingExtraError`` naming
the extra when they are missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy_exports
from engine.finetune.config import DEFAULT_TARGETS, FinetuneConfig, LoraConfig
from engine.finetune.export import SYSTEM_PROMPT_KEY

# Public name -> module that defines it; those modules import torch, so load them on use.
_LAZY = {
    "finetune": "engine.finetune.recipe",
    "FinetuneReport": "engine.finetune.recipe",
    "TrainProgress": "engine.finetune.train",
    "write_adapter": "engine.finetune.export",
    "merge_adapter": "engine.finetune.merge",
}

__all__ = sorted([*_LAZY, "DEFAULT_TARGETS", "FinetuneConfig", "LoraConfig", "SYSTEM_PROMPT_KEY"])

if TYPE_CHECKING:
    from engine.finetune.export import write_adapter
    from engine.finetune.merge import merge_adapter
    from engine.finetune.recipe import FinetuneReport, finetune
    from engine.finetune.train import TrainProgress


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
