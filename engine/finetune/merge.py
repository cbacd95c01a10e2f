"""Merge a LoRA adapter into its base model: one standalone GGUF that llama.cpp loads as a model.

Each adapted tensor becomes ``W + alpha / rank * B @ A`` (computed in float32 from the
dequantized base) and is re-quantized; every other tensor and all metadata are
copied unchanged, and the adapter's ``bakeoff.system_prompt`` (the system prompt it
was trained with) is added, so the merged model carries it too. Q8_0 is the default
because re-quantizing to 4 bits erases much of a small LoRA update (its steps are
near the Q4 rounding step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import AdapterError, InputError, ModelError
from engine.finetune._deps import require_gguf
from engine.finetune.export import SYSTEM_PROMPT_KEY
from engine.finetune.gguf_write import publish, staging_path

MERGE_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "F32")


def _read_adapter(gguf, adapter_path: Path) -> tuple[float, str | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    try:
        reader = gguf.GGUFReader(adapter_path)
    except (ValueError, OSError) as exc:
        raise AdapterError(f"{adapter_path} is not a readable GGUF adapter ({exc}); re-export it") from exc
    if "adapter.type" not in reader.fields or reader.fields["adapter.type"].contents() != "lora":
        raise AdapterError(f"{adapter_path} is not a LoRA adapter (no adapter.type = 'lora'); pass the adapter file")
    alpha = float(reader.fields["adapter.lora.alpha"].contents()) if "adapter.lora.alpha" in reader.fields else 0.0
    system_prompt = reader.fields[SYSTEM_PROMPT_KEY].contents() if SYSTEM_PROMPT_KEY in reader.fields else None
    halves: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        base, _, part = t.name.rpartition(".")
        halves.setdefault(base, {})[part] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    pairs = {}
    for base, parts in halves.items():
        if set(parts) != {"lora_a", "lora_b"}:
            raise AdapterError(f"{adapter_path}: {base} lacks its lora_a or lora_b tensor; re-export the adapter")
        pairs[base] = (parts["lora_a"], parts["lora_b"])
    return alpha, system_prompt, pairs


def merge_adapter(
    base_model_path: str | Path,
    adapter_path: str | Path,
    out_path: str | Path,
    *,
    quantization: str = "Q8_0",
) -> Path:
    """Write base + adapter as one GGUF model.

    Args:
        base_model_path: the base ``.gguf`` the adapter was trained for.
        adapter_path: the GGUF LoRA adapter.
        out_path: the merged ``.gguf`` to write (replaced if it exists).
        quantization: storage type of the merged tensors, one of ``MERGE_TYPES``.

    Raises:
        InputError: unknown quantization type.
        ModelError: the base model cannot be read.
        AdapterError: the adapter is unreadable or does not fit the base model.
        MissingExtraError: the gguf package is not installed.
    """
    gguf = require_gguf()
    if quantization not in MERGE_TYPES:
        raise InputError(f"cannot merge into {quantization!r}; choose one of {', '.join(MERGE_TYPES)}")
    qtype = gguf.GGMLQuantizationType[quantization]
    try:
        base = gguf.GGUFReader(base_model_path)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{base_model_path} is not a readable GGUF model ({exc}); re-fetch it") from exc
    alpha, system_prompt, pairs = _read_adapter(gguf, Path(adapter_path))
    names = {t.name for t in base.tensors}
    missing = sorted(set(pairs) - names)
    if missing:
        raise AdapterError(
            f"adapter tensors {missing[:3]} do not exist in {base_model_path}; was it trained for another model?"
        )

    out_path = Path(out_path)
    tmp = staging_path(out_path, error=ModelError, what="the merged model")
    arch = base.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(tmp, arch=arch)
    for key, field in base.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or (key == SYSTEM_PROMPT_KEY and system_prompt):
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    if system_prompt:
        writer.add_string(SYSTEM_PROMPT_KEY, system_prompt)
    for t in base.tensors:
        pair = pairs.get(t.name)
        if pair is None:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
            continue
        a, b = pair
        weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if a.shape[1] != weight.shape[1] or b.shape[0] != weight.shape[0] or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{t.name}: adapter shapes {a.shape}, {b.shape} do not fit the weight {weight.shape}")
        rank = a.shape[0]
        merged = weight + (alpha / rank if alpha else 1.0) * (b @ a)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, merged)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(t.name, merged.astype(np.float16))
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(merged, qtype), raw_dtype=qtype)
    return publish(writer, tmp, out_path, error=ModelError, what="the merged model")
