"""bakeoff's native core over llama.cpp (built from csrc/).

Import it through ``engine._native`` (which checks the build against the installed
llama-cpp-python). Failures raise the ``engine.errors`` classes: ``ModelError``,
``AdapterError``, ``ContextOverflowError``, ``CancelledError``,
``GeneratorBusyError``, ``InputError``, ``GenerationError`` (``EngineError`` for any
other failure of the core).

Check this stub against the compiled module with
``python -m mypy.stubtest engine._core --allowlist .ci/stubtest-allowlist.txt``.
"""

from typing import Callable, Sequence

class _pybind11_type(type):
    """pybind11's metaclass of every class below (``pybind11_builtins.pybind11_type``; not importable)."""

LLAMA_CPP_PYTHON_VERSION: str
"""The llama-cpp-python version whose llama.h / libllama this module was built against."""
NATIVE_BUILD: bool
"""True when compiled with -march=native (CMake option BAKEOFF_NATIVE)."""
KV_TYPES: tuple[str, ...]
"""The K/V cache element types ``Session(kv_type=...)`` takes ("f16" first), from the native table."""

class BackendDevice(metaclass=_pybind11_type):
    """A ggml device llama.cpp can run on (read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def type(self) -> str:
        """"cpu", "gpu", "accel" or "other"."""
    @property
    def memory_free_bytes(self) -> int: ...
    @property
    def memory_total_bytes(self) -> int: ...

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

class ModelInfo(metaclass=_pybind11_type):
    """Metadata of a loaded GGUF model (read-only; text from the file with invalid UTF-8 as U+FFFD)."""

    @property
    def path(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def description(self) -> str:
        """llama.cpp's one-line description, e.g. "llama ?B Q4_1"."""
    @property
    def quantization(self) -> str:
        """The file type, e.g. "Q4_1"."""
    @property
    def n_params(self) -> int: ...
    @property
    def size_bytes(self) -> int:
        """Bytes of all weight tensors."""
    @property
    def n_ctx_train(self) -> int:
        """Tokens of context the model was trained for."""
    @property
    def n_layer(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def chat_template(self) -> str:
        """The GGUF's chat template, "" when it carries none."""
    @property
    def n_gpu_layers_requested(self) -> int: ...
    @property
    def n_layers_offloaded(self) -> int: ...
    @property
    def extra_buffer_types(self) -> bool:
        """Loaded with llama.cpp's extra CPU buffer types (repacking, AMX)."""

class Model(metaclass=_pybind11_type):
    """A GGUF model, memory-mapped; shared by Sessions and LoraAdapters built on it."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0, use_mmap: bool = True,
                 use_extra_bufts: bool = True) -> None:
        """Load ``path`` (GIL released). Raises ModelError: missing, not GGUF, truncated, unsupported
        architecture; the message quotes llama.cpp's error lines.

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

class LoraAdapter(metaclass=_pybind11_type):
    """A GGUF LoRA adapter loaded once against a Model."""

    def __init__(self, model: Model, path: str) -> None:
        """Load ``path`` (GIL released). Raises AdapterError when it is not a LoRA GGUF or does not match
        ``model``; the message quotes llama.cpp's error lines."""
    @property
    def path(self) -> str: ...
    @property
    def alpha(self) -> float:
        """adapter.lora.alpha (0 when absent)."""
    def meta(self, key: str) -> str:
        """The GGUF metadata value of ``key`` as a string, "" when absent."""
    @property
    def metadata(self) -> dict[str, str]:
        """Every GGUF key/value of the adapter file, values as llama.cpp renders them as text
        (arrays as "[a, b]"; invalid UTF-8 as U+FFFD)."""

class SamplingOptions(metaclass=_pybind11_type):
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

class Timings(metaclass=_pybind11_type):
    """Per-stage timings of one request (steady clock, milliseconds; read-only)."""

    @property
    def tokenize_ms(self) -> float:
        """0 when the prompt came as token ids."""
    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens after truncation."""
    @property
    def truncated_tokens(self) -> int:
        """Tokens dropped from the left of the prompt."""
    @property
    def reused_tokens(self) -> int:
        """Prompt tokens whose K/V came from the cache, not evaluated."""
    @property
    def spliced_tokens(self) -> int:
        """Prompt tokens whose K/V came from spliced chunk states, not evaluated."""
    @property
    def splice_ms(self) -> float:
        """Moving, restoring and joining the chunk states (a K-shift left to llama.cpp runs in prefill)."""
    @property
    def k_shifted_tokens(self) -> int:
        """Spliced tokens moved by llama.cpp's K-shift, which rotates every cell of the cache in the
        prefill; 0 when each moved state's own keys were rotated (``Session.splice_shift``)."""
    @property
    def prefill_ms(self) -> float: ...
    @property
    def prefill_tokens(self) -> int: ...
    @property
    def prefill_tokens_per_s(self) -> float: ...
    @property
    def ttft_ms(self) -> float:
        """Request start to first token sampled."""
    @property
    def decode_ms(self) -> float:
        """First token sampled to last token sampled."""
    @property
    def decode_tokens(self) -> int:
        """Tokens evaluated one at a time after the first."""
    @property
    def decode_tokens_per_s(self) -> float: ...
    @property
    def total_ms(self) -> float: ...

class Result(metaclass=_pybind11_type):
    """A finished request (read-only)."""

    @property
    def text(self) -> str: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def stop_reason(self) -> str:
        """"eos", "stop", "length" or "context_full"."""
    @property
    def timings(self) -> Timings: ...
    @property
    def logits(self) -> list[float]:
        """The n_vocab logits after the prompt when ``generate(return_logits=True)``, else empty."""

class CancelToken(metaclass=_pybind11_type):
    """The cancellation flag of one request, made when the request is submitted.

    Pass it to ``Session.generate(cancel=...)``; ``cancel()`` from any thread, at any
    time after it is made, stops that request (before it starts, or at its next
    step) and never any other.
    """

    def __init__(self) -> None: ...
    def cancel(self) -> None:
        """Cancel the request (idempotent; a request that already finished is unaffected)."""
    @property
    def cancelled(self) -> bool: ...

class Session(metaclass=_pybind11_type):
    """A llama.cpp context on a Model: KV cache with prefix reuse, decode loop, sampling.

    One request at a time: a concurrent call raises GeneratorBusyError.
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
        splice_slots: int = 0,
        rotate_splices: bool = True,
    ) -> None:
        """Create the context (flash_attn: -1 auto, 0 off, 1 on; ``kv_type`` one of ``KV_TYPES``).

        ``rotate_splices``: move a spliced state by rotating its own keys before restoring it,
        where the model's RoPE and the state's layout allow (see ``splice_shift``); False:
        llama.cpp's K-shift, which rotates every cell of the cache at the next decode.
        Raises InputError for unusable settings."""
    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingOptions,
        stop: Sequence[str] = ...,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
        truncate_left: bool = False,
        reuse_prefix: bool = True,
        cancel: CancelToken | None = None,
        on_piece: Callable[[str], None] | None = None,
        splices: Sequence[tuple[int, bytes, int, int]] = ...,
        return_logits: bool = False,
    ) -> Result:
        """Generate with the GIL released.

        ``prompt`` is text, tokenized with BOS and special tokens parsed, or token ids used
        as they are (``timings.tokenize_ms`` is then 0). ``cancel`` is this request's
        token (made by the caller when it submitted the request); without one, only
        ``Session.cancel()`` reaches the request. ``on_piece`` (called with the GIL held)
        receives each piece of final, valid UTF-8 text. Called on the main thread, the
        request runs Python's signal handlers every few milliseconds, so Ctrl-C raises
        KeyboardInterrupt; the session stays usable. ``splices`` are (start, state, n_tokens,
        position) of :meth:`chunk_state` results; each state is read in place, not copied.
        ``return_logits`` keeps the logits after the prompt in ``Result.logits``.

        Raises ContextOverflowError, CancelledError, GeneratorBusyError, InputError (e.g.
        token ids outside the vocabulary), GenerationError.
        """
    def log_probs(
        self,
        context: Sequence[int],
        continuation: Sequence[int],
        *,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
    ) -> list[float]:
        """Natural-log probability of each ``continuation`` token given ``context`` and the continuation
        tokens before it (a log-softmax over llama.cpp's logits), with ``adapters`` attached; GIL released.

        Reuses the cached prefix and evaluates only what is needed, with logits of the scored
        positions only; the cache then holds context + continuation minus its last token.
        Raises InputError (empty sequences, ids outside the vocabulary), ContextOverflowError,
        GeneratorBusyError, GenerationError.
        """
    def chunk_state(
        self,
        prefix: Sequence[int],
        chunk: Sequence[int],
        *,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
    ) -> bytes:
        """llama.cpp's sequence state of ``chunk`` evaluated after ``prefix`` (GIL released).

        Its cells sit at positions ``len(prefix)..``; the cache keeps prefix + chunk. Splice it
        with ``generate(splices=[(start, state, len(chunk), len(prefix))])``. Needs
        ``splice_slots >= 1``. Raises InputError, ContextOverflowError, GeneratorBusyError,
        GenerationError.
        """
    def prefix_state(
        self,
        prefix: Sequence[int],
        *,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
    ) -> bytes:
        """llama.cpp's sequence state of ``prefix`` evaluated alone, in one batch, from an empty cache
        (GIL released), for :meth:`chunk_states`. The cache keeps the prefix. Needs ``splice_slots >= 1``.
        Raises InputError, ContextOverflowError, GeneratorBusyError, GenerationError.
        """
    def chunk_states(
        self,
        prefix: Sequence[int],
        prefix_state: bytes,
        chunks: Sequence[Sequence[int]],
        *,
        adapters: Sequence[tuple[LoraAdapter, float]] = ...,
    ) -> tuple[list[bytes], int, int]:
        """The state of each of ``chunks`` after ``prefix`` (whose state :meth:`prefix_state` made: restored,
        not evaluated), up to ``splice_slots`` chunks per llama_decode, one sequence each (GIL released).

        Returns (states in the order of ``chunks``, llama_decode calls, groups of chunks). A chunk's
        bytes do not depend on the chunks computed beside it. The cache keeps the prefix. Raises
        InputError (also a ``prefix_state`` of other positions), ContextOverflowError,
        GeneratorBusyError, GenerationError.
        """
    def cancel(self) -> None:
        """Cancel the request generate() is running now, if any (any thread); it raises CancelledError."""
    def reset(self) -> None:
        """Forget the KV cache."""
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_batch(self) -> int: ...
    @property
    def splice_slots(self) -> int: ...
    @property
    def splice_shift(self) -> str:
        """How moved splice states are moved: "rotated" (each state's own keys, once checked to
        match llama.cpp's K-shift bit for bit or within 2 f16 steps), "unchecked" (no state has
        needed moving yet), or "k-shift: <why>" (llama.cpp's whole-cache K-shift, the fallback)."""
    @property
    def cached_tokens(self) -> list[int]:
        """A snapshot of the tokens whose K/V are in the cache, in order (safe while generating)."""
