"""Random LoRA adapters and other small GGUF files for SmolLM2-135M, written with the gguf package:
the one writer the native, generation, model-check, fuzz and server tests share."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_LAYER = 576, 30  # SmolLM2-135M


def write_lora(path: Path, *, arch: str = "llama", n_in: int = N_EMBD, n_out: int = N_EMBD, rank: int = 8,
               std: float = 0.02, seed: int = 0, poison: float | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """A random LoRA on every attn_q, in the layout convert_lora_to_gguf.py writes.

    ggml shapes: lora_a is [n_in, rank], lora_b is [rank, n_out] (NumPy shapes are reversed);
    ``n_in`` or ``n_out`` other than 576, or another ``arch``, make one that does not fit the
    model. ``poison`` is written into one weight of the middle layer; ``metadata`` are extra
    string keys (e.g. ``bakeoff.system_prompt``).
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    for il in range(N_LAYER):
        a = (rng.standard_normal((rank, n_in)) * std).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * std).astype(np.float32)
        if poison is not None and il == N_LAYER // 2:
            b[3, 5] = poison
        writer.add_tensor(f"blk.{il}.attn_q.weight.lora_a", a)
        writer.add_tensor(f"blk.{il}.attn_q.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_alien(path: Path) -> Path:
    """A GGUF of an architecture llama.cpp does not know."""
    writer = gguf.GGUFWriter(str(path), "notamodel")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
