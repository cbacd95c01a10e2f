"""The value types of generation: settings (model, sampling), prompts and results,
with the checks that turn a caller's values into them.

Kept apart from :mod:`engine.generation.generator` so the types can be read, validated and
documented without the native extension's policy around them; ``engine.generation.generator``
re-exports the public names.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard, Union

from engine.errors import InputError
from engine.hardware import EXTRA_BUFFERS, max_threads

Message = Union[Mapping[str, str], tuple[str, str]]
TokenIds = Sequence[int]
#: A prompt: text (tokenized with BOS and special tokens such as ``<|im_end|>`` read
#: as those tokens), chat messages (formatted with the model's own template), or token
#: ids the model's tokenizer already made (used as they are, not tokenized again).
Prompt = Union[str, Sequence[Message], TokenIds]

KV_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
#: llama.cpp rounds a context up to a multiple of this many tokens (so 256 is also its minimum);
#: other sizes are refused rather than silently enlarged.
N_CTX_STEP = 256
#: Most chunk states one request may splice (llama.cpp allows 256 sequences; a prompt
#: holds far fewer passages).
MAX_SPLICE_SLOTS = 64
_SEED_MAX = 2**32 - 1
_INT32 = range(-(2**31), 2**31)  # the native core's integers: larger values are refused here, typed


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int32(value: object) -> TypeGuard[int]:
    return _is_int(value) and value in _INT32


@dataclass(frozen=True)
class GeneratorConfig:
    """How the model and its context are set up (fixed for a Generator's lifetime).

    ``n_ctx`` and ``n_batch`` are in tokens, ``n_ctx`` a multiple of 256 (what llama.cpp
    allocates: it rounds other sizes up); ``n_threads`` defaults to half the CPUs
    this process may use (about the physical cores), ``n_threads_batch`` (prefill) to
    ``n_threads``; ``n_gpu_layers`` < 0 offloads every layer; ``flash_attn`` None
    lets llama.cpp decide; ``kv_type`` is the K/V cache element type; ``seed`` seeds
    sampling at temperature > 0; ``extra_buffers`` is llama.cpp's extra CPU buffer
    types (weight repacking, AMX): "on", "off", or "auto" (off when the CPU backend
    has AMX, whose multi-token matmul crashes in the llama.cpp we link; on otherwise).
    ``splice_slots`` is how many precomputed chunk states (:meth:`Generator.chunk_state`)
    one request may splice; 0 (the default) makes the context exactly as without
    splicing, any other value a unified KV cache with one scratch sequence per slot.
    """

    n_ctx: int = 2048
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    flash_attn: bool | None = None
    kv_type: str = "f16"
    seed: int = 0
    use_mmap: bool = True
    extra_buffers: str = "auto"
    splice_slots: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first unusable field."""
        if not _is_int32(self.n_ctx) or self.n_ctx < N_CTX_STEP or self.n_ctx % N_CTX_STEP:
            hint = ""
            if _is_int32(self.n_ctx) and self.n_ctx > 0:
                hint = f" (llama.cpp would silently make it {-(-self.n_ctx // N_CTX_STEP) * N_CTX_STEP})"
            raise InputError(f"n_ctx must be a multiple of {N_CTX_STEP} tokens, at least {N_CTX_STEP}: "
                             f"got {self.n_ctx!r}{hint}")
        if not _is_int32(self.n_batch) or self.n_batch < 1:
            raise InputError(f"n_batch must be an integer >= 1 token, got {self.n_batch!r}")
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if value is not None and (not _is_int32(value) or value < 1):
                raise InputError(f"{name} must be None or an integer >= 1, got {value!r}")
            if value is not None and value > (limit := max_threads()):
                raise InputError(f"{name}={value} is more than the {limit} threads allowed here (4 per usable CPU, "
                                 "at least 16; more only slow generation down, and far more crash llama.cpp): "
                                 "pass fewer, or None for the default")
        if not _is_int32(self.n_gpu_layers):
            raise InputError(f"n_gpu_layers must be an integer (negative = all layers), got {self.n_gpu_layers!r}")
        if self.flash_attn not in (None, True, False):
            raise InputError(f"flash_attn must be None (auto), True or False, got {self.flash_attn!r}")
        if self.kv_type not in KV_TYPES:
            raise InputError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= _SEED_MAX:
            raise InputError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        if not _is_int32(self.splice_slots) or not 0 <= self.splice_slots <= MAX_SPLICE_SLOTS:
            raise InputError(f"splice_slots must be an integer in [0, {MAX_SPLICE_SLOTS}], got {self.splice_slots!r}")
        if self.extra_buffers not in EXTRA_BUFFERS:
            raise InputError(f"extra_buffers must be one of {', '.join(EXTRA_BUFFERS)}, got {self.extra_buffers!r}")
        if self.kv_type == "bf16" and self.splice_slots:
            # A moved bf16 state falls back to llama.cpp's K-shift (our rotation is f16 only), whose
            # CPU RoPE takes f16 and f32 (quantized types are cast to f32 first) and aborts the
            # process on bf16 (ggml ops.cpp); refusing here is the only way to lose nothing.
            raise InputError('kv_type="bf16" cannot be used with splice_slots: this llama.cpp cannot move a bf16 '
                             'chunk state to another position; use kv_type="f16" (or f32, or a quantized type)')


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature`` 0 means greedy (deterministic)."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None  # None: the Generator's seed
    ignore_eos: bool = False  # keep generating past end-of-sequence (benchmarks)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first unusable field."""
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            return float(value)

        if number("temperature") < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_int32(self.top_k) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < number("top_p") <= 1:
            raise InputError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not 0 <= number("min_p") <= 1:
            raise InputError(f"min_p must be in [0, 1] (0 = off), got {self.min_p!r}")
        if number("repeat_penalty") <= 0:
            raise InputError(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty!r}")
        if not _is_int32(self.repeat_last_n) or self.repeat_last_n < -1:
            raise InputError(f"repeat_last_n must be an integer >= -1, got {self.repeat_last_n!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= _SEED_MAX):
            raise InputError(f"seed must be None or an integer in [0, 2**32 - 1], got {self.seed!r}")


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of the loaded GGUF model."""

    path: str
    name: str
    architecture: str
    description: str
    quantization: str
    n_params: int
    size_bytes: int
    context_length: int  # tokens the model was trained for
    n_layer: int
    n_embd: int
    n_vocab: int
    chat_template: str  # "" when the GGUF carries none


@dataclass(frozen=True)
class GenerationTimings:
    """Per-stage timings of one request, measured in C++ with a monotonic clock."""

    tokenize_ms: float
    prompt_tokens: int
    truncated_tokens: int
    reused_tokens: int  # prompt tokens whose K/V came from the previous request
    prefill_ms: float
    prefill_tokens: int
    prefill_tokens_per_s: float
    ttft_ms: float  # request start (tokenizing included) to first token
    decode_ms: float
    decode_tokens: int
    decode_tokens_per_s: float
    total_ms: float
    backend: str  # "CPU", or the GPU device(s) layers were offloaded to
    devices: tuple[str, ...]  # every ggml device llama.cpp sees
    n_gpu_layers_offloaded: int
    extra_buffer_types: bool  # llama.cpp's extra CPU buffer types (repacking, AMX) in use
    spliced_tokens: int = 0  # prompt tokens whose K/V came from spliced chunk states
    splice_ms: float = 0.0  # moving, restoring and joining the chunk states
    k_shifted_tokens: int = 0  # spliced tokens left to llama.cpp's whole-cache K-shift (runs in prefill)


@dataclass(frozen=True)
class Generation:
    """A finished request: the text, its token ids, why it stopped, and timings.

    ``stop_reason`` is "eos" (the model ended), "stop" (a stop string; not included
    in ``text``), "length" (``max_tokens`` reached) or "context_full".
    """

    text: str
    tokens: tuple[int, ...]
    stop_reason: str
    timings: GenerationTimings


# Checks of a caller's values ----------------------------------------------------

def check_text(text: object, what: str) -> str:
    """``text`` if it is a str that encodes as UTF-8; InputError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode ({exc.reason} at {exc.start}): remove lone surrogates") from None
    return text


#: Roles every chat template takes; templates for tool use also take ``tool``.
CHAT_ROLES = ("system", "user", "assistant")
_TOOL_ROLE = re.compile(r"""['"]tool['"]""")


def chat_roles(template: str) -> tuple[str, ...]:
    """The message roles a chat template knows: system, user and assistant, and tool when the
    template names the role ``'tool'``; () for no template.

    llama.cpp renders any role a template does not reject (ChatML writes
    ``<|im_start|>wizard``), so the roles are checked here instead.
    """
    if not template:
        return ()
    return CHAT_ROLES + (("tool",) if _TOOL_ROLE.search(template) else ())


def check_messages(messages: object, roles: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Chat messages (mappings with "role" and "content", or pairs) as (role, content) pairs.

    With ``roles``, a message of another role is an InputError listing them.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    pairs = []
    for i, message in enumerate(messages):
        if isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        elif isinstance(message, tuple) and len(message) == 2:
            role, content = message
        else:
            raise InputError(f"message {i} must be a mapping with 'role' and 'content' or a (role, content) pair")
        role = check_text(role, f"message {i} role")
        if roles is not None and role not in roles:
            raise InputError(f"message {i} has role {role!r}, which the model's chat template does not know: "
                             f"use one of {', '.join(roles)}")
        pairs.append((role, check_text(content, f"message {i} content")))
    return pairs


def check_request(max_tokens: object, sampling: object, stop: object, grammar: object, truncate: object) -> list[str]:
    """Check the settings of one request (InputError naming the first unusable one); returns the stop strings."""
    if not _is_int32(max_tokens) or max_tokens <= 0:
        raise InputError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not isinstance(sampling, SamplingConfig):
        raise InputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    sampling.validate()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, Sequence) or any(not check_text(s, "stop") for s in stops):
        raise InputError(f"stop must be a list of non-empty strings, got {stop!r}")
    if grammar is not None:
        check_text(grammar, "grammar")
    if truncate not in ("error", "left"):
        raise InputError(f"truncate must be 'error' or 'left', got {truncate!r}")
    return list(stops)


def _is_token_id(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_token_ids(prompt: object) -> bool:
    """True when ``prompt`` is a non-empty sequence whose first item is an integer (token ids, not messages)."""
    return (isinstance(prompt, Sequence) and not isinstance(prompt, (str, bytes)) and len(prompt) > 0
            and _is_token_id(prompt[0]))


def check_token_ids(tokens: object, n_vocab: int, what: str) -> list[int]:
    """``tokens`` as a list of ints, each in ``[0, n_vocab)``; InputError naming ``what`` otherwise."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise InputError(f"{what} must be a sequence of token ids (ints), got {type(tokens).__name__}")
    for i, token in enumerate(tokens):
        if not _is_token_id(token) or not 0 <= token < n_vocab:
            raise InputError(f"{what}[{i}] = {token!r} is not a token id of this model (an int in [0, {n_vocab})): "
                             "pass ids made by its tokenize()")
    return [int(token) for token in tokens]
