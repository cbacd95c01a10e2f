"""Random LoRA adapters for SmolLM2-135M, written as GGUF (the layout of tests/test_lora.py's writer)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_LAYER = 576, 30  # SmolLM2-135M


def write_lora(path: Path, *, std: float = 0.02, seed: int = 0, poison: float | None = None) -> Path:
    """A random LoRA on every attn_q (the layout of tests/test_lora.py); ``poison`` is written into one weight."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    for il in range(N_LAYER):
        a = (rng.standard_normal((8, N_EMBD)) * std).astype(np.float32)
        b = (rng.standard_normal((N_EMBD, 8)) * std).astype(np.float32)
        if poison is not None and il == N_LAYER // 2:
            b[3, 5] = poison
        writer.add_tensor(f"blk.{il}.attn_q.weight.lora_a", a)
        writer.add_tensor(f"blk.{il}.attn_q.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
