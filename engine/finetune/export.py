"""Write trained LoRA pairs as a GGUF adapter that llama.cpp loads with the base model.

The format is what llama.cpp's ``convert_lora_to_gguf.py`` writes and
``src/llama-adapter.cpp`` checks: ``general.type = "adapter"``,
``general.architecture`` equal to the base model's, ``adapter.type = "lora"``,
``adapter.lora.alpha`` (llama.cpp scales each update by ``alpha / rank``), and per
adapted tensor ``<name>.lora_a`` with numpy shape ``(rank, in)`` (GGUF ``ne = (in,
rank)``) and ``<name>.lora_b`` with numpy shape ``(out, rank)`` (``ne = (rank, out)``),
both F32.

Beside llama.cpp's keys, ``bakeoff.system_prompt`` records the system prompt the
adapter was trained with, so inference can ask with that same prompt (llama.cpp
keeps an adapter's metadata: ``llama_adapter_meta_val_str``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import AdapterError
from engine.finetune._deps import require_gguf
from engine.finetune.config import LoraConfig
from engine.finetune.gguf_write import publish, staging_path
from engine.generation.chat import SYSTEM_PROMPT_KEY

if TYPE_CHECKING:
    import torch


def write_adapter(
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    config: LoraConfig,
    out_path: str | Path,
    *,
    architecture: str = "llama",
    name: str = "bakeoff baked-knowledge LoRA",
    system_prompt: str | None = None,
) -> Path:
    """Write ``pairs`` (``{base tensor name: (a, b)}``, as ``LlamaModel.lora_state()`` returns) to ``out_path``.

    Args:
        pairs: LoRA pairs keyed by the GGUF name of the base tensor they adapt.
        config: the adapter's configuration (its ``alpha`` is stored; ``rank`` is read from the tensors).
        out_path: the ``.gguf`` file to write (its folder is created; an existing file is replaced).
        architecture: the base model's ``general.architecture``.
        name: ``general.name`` of the adapter.
        system_prompt: the system prompt the pairs were trained with, stored under
            ``SYSTEM_PROMPT_KEY`` (not stored when None).

    Raises:
        AdapterError: a pair's shapes do not fit together or the file cannot be written.
    """
    gguf = require_gguf()
    out_path = Path(out_path)
    tmp = staging_path(out_path, error=AdapterError, what="the adapter")
    writer = gguf.GGUFWriter(tmp, arch=architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.alpha))
    if system_prompt is not None:
        writer.add_string(SYSTEM_PROMPT_KEY, system_prompt)
    for base_name, (a, b) in sorted(pairs.items()):
        if a.shape[0] != b.shape[1]:
            raise AdapterError(f"LoRA pair of {base_name}: a is {tuple(a.shape)}, b is {tuple(b.shape)}; ranks differ")
        writer.add_tensor(f"{base_name}.lora_a", a.detach().float().contiguous().numpy())
        writer.add_tensor(f"{base_name}.lora_b", b.detach().float().contiguous().numpy())
    return publish(writer, tmp, out_path, error=AdapterError, what="the adapter")
