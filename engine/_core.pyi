"""bakeoff's native core over llama.cpp (built from csrc/).

Import it through ``engine._native`` (which checks the build against the installed
llama-cpp-python). Failures raise the ``engine.errors`` classes: ``ModelError``,
``AdapterError``, ``ContextOverflowError``, ``CancelledError``,
``GeneratorBusyError``, ``InputError``, ``GenerationError``.
"""

from typing import Callable, Sequence

LLAMA_CPP_PYTHON_VERSION: str
"""The llama-cpp-python version whose llama.h / libllama this module was built against."""
NATIVE_BUILD: bool
"""True when compiled with -march=native (CMake option BAKEOFF_NATIVE)."""

class BackendDevice:
    """A ggml device llama.cpp can run on."""

    name: str
    description: str
    type: str  # "cpu", "gpu", "accel" or "other"
    memory_free_bytes: int
    memory_total_bytes: int

def system_info() -> str:
    """llama.cpp's compile-time CPU features and backends."""

def supports_gpu_offload() -> bool:
    """True when the linked llama.cpp can offload layers."""

def supports_mmap() -> bool:
    """True when models can be memory-mapped."""

def backend_devices() -> list[BackendDevice]:
    """The ggml devices llama.cpp can run on."""

def sanitize_utf8(data: bytes) -> str:
    """Decode bytes as UTF-8, each invalid or cut sequence becoming one U+FFFD."""

class ModelInfo:
    """Metadata of a loaded GGUF model."""

    path: str
    name: str
    architecture: str
    description: str
    quantization: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_vocab: int
    chat_template: str
    n_gpu_layers_requested: int
    n_layers_offloaded: int
    extra_buffer_types: bool  # loaded with llama.cpp's extra CPU buffer types (repacking, AMX)

class Model:
    """A GGUF model, memory-mapped; shared by Sessions and LoraAdapters built on it."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0, use_mmap: bool = True,
                 use_extra_bufts: bool = True) -> None:
        """Load ``path`` (GIL released). Raises ModelError: missing, not GGUF, truncated, unsupported architecture.

        ``use_extra_bufts``: llama.cpp's extra CPU buffer types (weight repacking, AMX).
        """
    @property
    def info(self) -> ModelInfo: ...
    def meta(self, key: str) -> str:
        """The GGUF metadata value of ``key`` as a string, "" when absent."""
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS/EOS as the model wants, ``parse_special`` reads
        special-token text such as ``<|im_end|>`` as those tokens."""
    def detokenize(self, tokens: Sequence[int], *, render_special: bool = False) -> bytes:
        """Raw bytes of ``tokens`` (may end mid-character). Raises InputError for ids outside the vocabulary."""
    def apply_chat_template(
        self, messages: Sequence[tuple[str, str]], *, add_assistant: bool = True, template: str = ""
    ) -> str:
        """(role, content) messages rendered with the model's template (llama_chat_apply_template).
        Raises InputError when the model has no template llama.cpp recognises."""

class LoraAdapter:
    """A GGUF LoRA adapter loaded once against a Model."""

    def __init__(self, model: Model, path: str) -> None:
        """Load ``path`` (GIL released). Raises AdapterError when it is not a LoRA GGUF or does not match ``model``."""
    @property
    def path(self) -> str: ...
    @property
    def alpha(self) -> float:
        """adapter.lora.alpha (0 when absent)."""
    def meta(self, key: str) -> str: ...

class SamplingOptions:
    """Sampling of one request; temperature <= 0 is greedy."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int
    grammar: str
    ignore_eos: bool
    def __init__(self) -> None: ...

class Timings:
    """Per-stage timings of one request (steady clock, milliseconds)."""

    tokenize_ms: float
    prompt_tokens: int
    truncated_tokens: int
    reused_tokens: int
    prefill_ms: float
    prefill_tokens: int
    prefill_tokens_per_s: float
    ttft_ms: float
    decode_ms: float
    decode_tokens: int
    decode_tokens_per_s: float
    total_ms: float

class Result:
    text: str
    tokens: list[int]
    stop_reason: str  # "eos", "stop", "length" or "context_full"
    timings: Timings

class Session:
    """A llama.cpp context on a Model: KV cache with prefix reuse, decode loop, sampling.

    One generation at a time: a concurrent call raises GeneratorBusyError.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 1,
        n_threads_batch: int = 1,
        flash_attn: int = -1,
        kv_type: str = "f16",
        warmup: bool = True,
    ) -> None:
        """Create the context (flash_attn: -1 auto, 0 off, 1 on). Raises InputError for unusable settings."""
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int,
        sampling: SamplingOptions,
        stop: Sequence[str] = ...,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
        truncate_left: bool = False,
        reuse_prefix: bool = True,
        on_piece: Callable[[str], None] | None = None,
    ) -> Result:
        """Generate with the GIL released. ``prompt`` is tokenized with special tokens parsed.
        ``on_piece`` (called with the GIL held) receives each piece of final, valid UTF-8 text.
        Raises ContextOverflowError, CancelledError, GeneratorBusyError, InputError, GenerationError."""
    def cancel(self) -> None:
        """Stop the running generate() (any thread); it raises CancelledError."""
    def reset(self) -> None:
        """Forget the KV cache."""
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_batch(self) -> int: ...
    @property
    def cached_tokens(self) -> list[int]:
        """Tokens whose K/V are in the cache, in order."""
