"""A small torch Llama that computes what llama.cpp's ``build_llama`` graph computes.

It runs on the GGUF tensors as stored (see :mod:`engine.finetune.gguf_weights`):
llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that its
"normal" RoPE (``LLAMA_ROPE_TYPE_NORM``: rotate pairs of *consecutive* head
values) reproduces the Hugging Face model. We use that same RoPE variant, so no
un-permutation is needed and every LoRA pair trained here is, unchanged, the
``blk.N.<name>.weight.lora_a``/``lora_b`` pair llama.cpp applies to that tensor.

Per block: RMSNorm -> q/k/v projections (+ LoRA) -> RoPE on q, k -> causal
grouped-query attention scaled by 1/sqrt(head_dim) -> output projection (+ LoRA)
-> residual; RMSNorm -> SiLU(gate) * up -> down (+ LoRA) -> residual. Then the
output norm and the output projection (the token embeddings when tied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import InputError
from engine.finetune._deps import require_torch
from engine.finetune.config import DEFAULT_TARGETS, MATMUL_DTYPES, LoraConfig
from engine.finetune.gguf_weights import BaseWeights

if TYPE_CHECKING:  # torch has no type information mypy can use here; names only
    import torch
    from torch import nn
else:
    torch = require_torch()
    nn = torch.nn
F = torch.nn.functional


@dataclass(frozen=True)
class BlockLayout:
    """Passages trained as independent blocks, the way spliced chunk states are made.

    A chunk state is computed as ``[shared prefix][chunk]`` with the chunk right after
    the prefix, then moved to its slot in the prompt (its keys rotated there, its values
    as they were). So a block token attends to the prefix and to its own block only, at
    the position it had when its state was made; every other token attends to everything
    before it causally, block keys seen at their slot positions.

    Attributes:
        positions: ``(batch, time)`` position of each token when its K/V was computed
            (block tokens: prefix length + offset in the block; others: their index).
        mask: ``(batch, 1, time, time)`` True where a block token may attend (causal for
            the other rows, which take the plain causal attention instead).
        in_block: ``(batch, 1, time, 1)`` True for the rows of block tokens.
    """

    positions: torch.Tensor
    mask: torch.Tensor
    in_block: torch.Tensor

    @classmethod
    def of(cls, width: int, rows: list[tuple[int, tuple[tuple[int, int], ...]]]) -> BlockLayout:
        """From each row's ``(prefix_len, ((start, length), ...))``, rows padded to ``width`` tokens."""
        n = len(rows)
        positions = torch.arange(width).repeat(n, 1)
        block_of = torch.zeros((n, width), dtype=torch.long)  # 0: not in a block
        for r, (prefix_len, blocks) in enumerate(rows):
            for number, (start, length) in enumerate(blocks, 1):
                positions[r, start : start + length] = torch.arange(prefix_len, prefix_len + length)
                block_of[r, start : start + length] = number
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        same_block = block_of[:, :, None] == block_of[:, None, :]
        prefix = torch.stack([torch.arange(width) < prefix_len for prefix_len, _ in rows])[:, None, :]
        in_block = block_of > 0
        mask = torch.where(in_block[:, :, None], (same_block | prefix) & causal, causal)
        return cls(positions, mask[:, None], in_block[:, None, :, None])


class LoraPair(nn.Module):
    """The trainable low-rank update ``scale * B @ A`` of one frozen projection.

    ``a`` has shape ``(rank, in)`` and ``b`` ``(out, rank)``: exactly the numpy
    shapes of the GGUF adapter's ``lora_a``/``lora_b`` tensors.
    """

    def __init__(self, n_in: int, n_out: int, config: LoraConfig) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.empty(config.rank, n_in))
        self.b = nn.Parameter(torch.zeros(n_out, config.rank))
        # Same start as PEFT: A Kaiming-uniform, B zero, so training starts at the base model.
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.scale = config.scale
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.a), self.b) * self.scale


def lora_key(layer: int, target: str) -> str:
    """Module key of a LoRA pair (``nn.ModuleDict`` keys cannot contain dots)."""
    return f"blk_{layer}_{target}"


def gguf_weight_name(layer: int, target: str) -> str:
    """GGUF name of the base tensor a LoRA pair adapts."""
    return f"blk.{layer}.{target}.weight"


class LlamaModel(nn.Module):
    """The frozen base (float32, GGUF layout) plus optional trainable LoRA pairs.

    Args:
        base: the loaded base model; its tensors are shared, not copied.
        lora: adapter configuration, or None for the plain base model.

    Raises:
        InputError: a LoRA target is not a projection of the model's blocks, or
            ``matmul_dtype`` is not one of ``MATMUL_DTYPES``.
    """

    def __init__(self, base: BaseWeights, lora: LoraConfig | None = None, *, matmul_dtype: str = "float32") -> None:
        super().__init__()
        self.hparams = base.hparams
        self._w = base.tensors
        for tensor in self._w.values():
            tensor.requires_grad_(False)
        # Frozen projection weights in the matmul dtype: bfloat16 roughly halves the
        # time of a training step on CPUs with AVX-512 BF16; norms, residuals, RoPE,
        # the LoRA branch and the loss stay float32.
        if matmul_dtype not in MATMUL_DTYPES:
            raise InputError(f"matmul_dtype must be one of {', '.join(MATMUL_DTYPES)}, got {matmul_dtype!r}")
        dtype = getattr(torch, matmul_dtype)
        self._mm = {
            name: (t if dtype == torch.float32 else t.to(dtype))
            for name, t in self._w.items()
            if name.startswith("blk.") and t.dim() == 2
        }
        hp = self.hparams
        self.lora_config = lora
        self.lora = nn.ModuleDict()
        if lora is not None:
            unknown = sorted(set(lora.targets) - set(DEFAULT_TARGETS))
            if unknown:
                raise InputError(f"unknown LoRA targets {unknown}; choose among {list(DEFAULT_TARGETS)}")
            for layer in range(hp.n_layer):
                for target in lora.targets:
                    n_out, n_in = self._w[gguf_weight_name(layer, target)].shape
                    self.lora[lora_key(layer, target)] = LoraPair(n_in, n_out, lora)
        half = hp.n_rot // 2
        self._inv_freq = hp.rope_freq_base ** (-torch.arange(half, dtype=torch.float64) * 2.0 / hp.n_rot)

    def _proj(self, x: torch.Tensor, layer: int, target: str) -> torch.Tensor:
        weight = self._mm[gguf_weight_name(layer, target)]
        y = F.linear(x.to(weight.dtype), weight).to(x.dtype)
        pair = self.lora[lora_key(layer, target)] if lora_key(layer, target) in self.lora else None
        return y if pair is None else y + pair(x)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.hparams.rms_norm_eps)
        return x * self._w[name]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: (B, H, T, D). "Normal" RoPE: rotate (x[2i], x[2i+1]) by pos * base^(-2i/n_rot).
        n_rot = self.hparams.n_rot
        rot, rest = x[..., :n_rot], x[..., n_rot:]
        pairs = rot.unflatten(-1, (n_rot // 2, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    def _angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float64)[..., None] * self._inv_freq
        return angles.cos().float(), angles.sin().float()

    def hidden(self, tokens: torch.Tensor, blocks: BlockLayout | None = None) -> torch.Tensor:
        """Final hidden states, after the output norm: ``(batch, time, n_embd)``.

        ``tokens`` is a ``(batch, time)`` integer tensor starting at position 0;
        padding must be on the right (attention is causal, so it never reaches
        the real tokens). ``blocks`` trains passages as spliced blocks (see ``BlockLayout``).
        """
        hp = self.hparams
        n_batch, n_time = tokens.shape
        cos, sin = self._angles(torch.arange(n_time))
        if blocks is not None:  # (batch, 1, time, half): broadcast over the heads
            block_cos, block_sin = (t[:, None] for t in self._angles(blocks.positions))
        x = F.embedding(tokens, self._w["token_embd.weight"])
        for layer in range(hp.n_layer):
            h = self._norm(x, f"blk.{layer}.attn_norm.weight")
            q = self._proj(h, layer, "attn_q").view(n_batch, n_time, hp.n_head, hp.head_dim).transpose(1, 2)
            k = self._proj(h, layer, "attn_k").view(n_batch, n_time, hp.n_head_kv, hp.head_dim).transpose(1, 2)
            v = self._proj(h, layer, "attn_v").view(n_batch, n_time, hp.n_head_kv, hp.head_dim).transpose(1, 2)
            gqa = hp.n_head != hp.n_head_kv
            # llama.cpp broadcasts KV head j to query heads j*g .. j*g+g-1 (g = n_head / n_head_kv).
            attn = F.scaled_dot_product_attention(self._rope(q, cos, sin), self._rope(k, cos, sin), v,
                                                  is_causal=True, enable_gqa=gqa)
            if blocks is not None:  # block rows: the prefix and their own block, at the positions they were made at
                in_blocks = F.scaled_dot_product_attention(
                    self._rope(q, block_cos, block_sin), self._rope(k, block_cos, block_sin), v,
                    attn_mask=blocks.mask, enable_gqa=gqa)
                attn = torch.where(blocks.in_block, in_blocks, attn)
            attn = attn.transpose(1, 2).reshape(n_batch, n_time, hp.n_embd)
            x = x + self._proj(attn, layer, "attn_output")
            h = self._norm(x, f"blk.{layer}.ffn_norm.weight")
            gated = F.silu(self._proj(h, layer, "ffn_gate")) * self._proj(h, layer, "ffn_up")
            x = x + self._proj(gated, layer, "ffn_down")
        return self._norm(x, "output_norm.weight")

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary for hidden states from :meth:`hidden`."""
        name = "token_embd.weight" if self.hparams.tied_output else "output.weight"
        return F.linear(hidden, self._w[name])

    def forward(self, tokens: torch.Tensor, blocks: BlockLayout | None = None) -> torch.Tensor:
        """Logits ``(batch, time, n_vocab)`` for every position of ``tokens``."""
        return self.project(self.hidden(tokens, blocks))

    def lora_state(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The trained pairs by GGUF base-tensor name: ``{name: (a (rank, in), b (out, rank))}``."""
        out = {}
        for layer in range(self.hparams.n_layer):
            for target in self.lora_config.targets if self.lora_config else ():
                pair: LoraPair = self.lora[lora_key(layer, target)]  # type: ignore[assignment]
                out[gguf_weight_name(layer, target)] = (pair.a.detach().clone(), pair.b.detach().clone())
        return out
