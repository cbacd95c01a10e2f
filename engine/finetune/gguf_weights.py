"""Read a Llama-architecture GGUF: hyper-parameters from its metadata, tensors dequantized.

The tensors keep the layout they have in the file (``numpy`` order, i.e. a weight
of GGUF shape ``ne = (in, out)`` becomes a ``(out, in)`` array), including
llama.cpp's permutation of ``attn_q``/``attn_k`` rows for its "normal" RoPE. The
torch model in :mod:`engine.finetune.torch_model` computes on that layout directly, so
LoRA tensors trained on it map 1:1 onto GGUF adapter tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelError
from engine.finetune._deps import require_gguf, require_torch

if TYPE_CHECKING:
    import torch

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class LlamaHParams:
    """The hyper-parameters of a Llama-architecture model, as its GGUF metadata states them."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_rot: int
    rope_freq_base: float
    rms_norm_eps: float
    tied_output: bool

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class BaseWeights:
    """A base model loaded for training: hyper-parameters and float32 tensors by GGUF name.

    ``tensor_types`` keeps each tensor's storage type name (``"Q4_1"``, ``"F32"``...)
    so that a merged model can be re-quantized like the original.
    """

    path: Path
    hparams: LlamaHParams
    tensors: dict[str, torch.Tensor]
    tensor_types: dict[str, str]


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ModelError(f"{reader.path}: GGUF metadata has no {key!r}; is this a complete llama.cpp model file?")
        return default
    return field.contents()


def read_hparams(reader: Any) -> LlamaHParams:
    """Hyper-parameters from an open ``gguf.GGUFReader``.

    Raises:
        ModelError: the file is not a Llama-architecture model or lacks a required key.
    """
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{reader.path}: architecture {arch!r} is not supported by the fine-tune recipe "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); use a Llama-architecture GGUF"
        )
    n_embd = int(_field(reader, f"{arch}.embedding_length"))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = int(_field(reader, f"{arch}.vocab_size", len(tokens.data) if tokens is not None else 0))
    return LlamaHParams(
        architecture=arch,
        n_layer=int(_field(reader, f"{arch}.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        n_ff=int(_field(reader, f"{arch}.feed_forward_length")),
        n_vocab=n_vocab,
        n_ctx_train=int(_field(reader, f"{arch}.context_length")),
        n_rot=int(_field(reader, f"{arch}.rope.dimension_count", n_embd // n_head)),
        rope_freq_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        tied_output="output.weight" not in names,
    )


def load_base(path: str | Path) -> BaseWeights:
    """Load a Llama GGUF's tensors dequantized to float32 torch tensors, and its hyper-parameters.

    Args:
        path: the base model's ``.gguf`` file.

    Raises:
        ModelError: the file is missing, not a GGUF, not Llama-architecture, or holds a
            tensor type the gguf package cannot dequantize.
        MissingExtraError: torch or gguf is not installed.
    """
    gguf = require_gguf()
    torch = require_torch()  # noqa: F811 (the module-level name is for annotations only)
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"base model {path} does not exist: fetch it with `bakeoff models fetch`")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable GGUF file ({exc}); re-fetch the model") from exc
    hparams = read_hparams(reader)
    tensors: dict[str, Any] = {}  # torch.Tensor
    types: dict[str, str] = {}
    for t in reader.tensors:
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise ModelError(
                f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which the gguf package "
                "cannot dequantize; use another quantization of the model (Q8_0, Q4_0, Q4_1 and F16 work)"
            ) from exc
        tensors[t.name] = torch.from_numpy(array.astype("float32", copy=False).copy())
        types[t.name] = t.tensor_type.name
    return BaseWeights(path=path, hparams=hparams, tensors=tensors, tensor_types=types)
