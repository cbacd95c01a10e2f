"""Text generation with a quantized GGUF model, LoRA adapters and prefix KV reuse.

The decode loop, the KV cache and the timings live in ``engine._core`` (C++, GIL
released); this module holds the policy: argument checking, chat formatting,
which adapters a request uses, and the result types.

Example::

    gen = Generator("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048)
    out = gen.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=32)
    print(out.text, out.timings.ttft_ms)
    for piece in gen.stream("Once upon a time", max_tokens=32):
        print(piece, end="")

Thread-safety: one ``Generator`` runs one request at a time. Concurrent calls
from several threads are serialised by a lock (each waits its turn); use
``cancel()`` from another thread to stop the running request.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Union

from engine._native import core
from engine.errors import AdapterError, InputError, ModelError
from engine.text_stream import TextStream

Message = Union[Mapping[str, str], tuple[str, str]]
Prompt = Union[str, Sequence[Message]]

KV_TYPES = ("f16", "bf16", "f32", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")
_SEED_MAX = 2**32 - 1


def _default_threads() -> int:
    """Half the CPUs this process may use (about the physical cores), as llama-cpp-python does."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GeneratorConfig:
    """How the model and its context are set up (fixed for a Generator's lifetime).

    ``n_ctx`` and ``n_batch`` are in tokens; ``n_threads`` defaults to half the CPUs
    this process may use (about the physical cores), ``n_threads_batch`` (prefill) to
    ``n_threads``; ``n_gpu_layers`` < 0 offloads every layer; ``flash_attn`` None
    lets llama.cpp decide; ``kv_type`` is the K/V cache element type; ``seed`` seeds
    sampling at temperature > 0.
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

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first unusable field."""
        if not _is_int(self.n_ctx) or self.n_ctx < 16:
            raise InputError(f"n_ctx must be an integer >= 16 tokens, got {self.n_ctx!r}")
        if not _is_int(self.n_batch) or self.n_batch < 1:
            raise InputError(f"n_batch must be an integer >= 1 token, got {self.n_batch!r}")
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise InputError(f"{name} must be None or an integer >= 1, got {value!r}")
        if not _is_int(self.n_gpu_layers):
            raise InputError(f"n_gpu_layers must be an integer (negative = all layers), got {self.n_gpu_layers!r}")
        if self.flash_attn not in (None, True, False):
            raise InputError(f"flash_attn must be None (auto), True or False, got {self.flash_attn!r}")
        if self.kv_type not in KV_TYPES:
            raise InputError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {self.kv_type!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= _SEED_MAX:
            raise InputError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")


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
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < number("top_p") <= 1:
            raise InputError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not 0 <= number("min_p") <= 1:
            raise InputError(f"min_p must be in [0, 1] (0 = off), got {self.min_p!r}")
        if number("repeat_penalty") <= 0:
            raise InputError(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty!r}")
        if not _is_int(self.repeat_last_n) or self.repeat_last_n < -1:
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


@dataclass
class _Request:
    prompt: str
    max_tokens: int
    sampling: object  # core.SamplingOptions
    stop: list[str]
    adapters: list[tuple[object, float]]
    truncate_left: bool
    reuse_prefix: bool = True


class Generator:
    """A GGUF model loaded once (memory-mapped), with one context for generation.

    Args:
        model_path: a ``.gguf`` model (a merged fine-tune works like any model).
        n_ctx, n_threads, n_batch, n_gpu_layers, flash_attn, kv_type, seed:
            see :class:`GeneratorConfig`; or pass ``config=`` instead.

    Raises:
        ModelError: the file is missing, not GGUF, truncated, or of an architecture
            this llama.cpp does not support.
        InputError: a setting is out of range.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        flash_attn: bool | None = None,
        kv_type: str = "f16",
        seed: int = 0,
        config: GeneratorConfig | None = None,
    ) -> None:
        if config is None:
            config = GeneratorConfig(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                                     flash_attn=flash_attn, kv_type=kv_type, seed=seed)
        config.validate()
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"no model file at '{path}': check the path, or fetch it with engine.models.fetch()")
        self.config = config
        self._lock = threading.Lock()
        self._adapters: dict[str, object] = {}
        self._attached: dict[str, float] = {}
        threads = config.n_threads or _default_threads()
        self._model = core.Model(str(path), n_gpu_layers=config.n_gpu_layers, use_mmap=config.use_mmap)
        flash = -1 if config.flash_attn is None else int(config.flash_attn)
        self._session = core.Session(self._model, n_ctx=config.n_ctx, n_batch=config.n_batch, n_threads=threads,
                                     n_threads_batch=config.n_threads_batch or threads, flash_attn=flash,
                                     kv_type=config.kv_type)
        info = self._model.info
        self.info = ModelInfo(
            path=info.path, name=info.name, architecture=info.architecture, description=info.description,
            quantization=info.quantization, n_params=info.n_params, size_bytes=info.size_bytes,
            context_length=info.n_ctx_train, n_layer=info.n_layer, n_embd=info.n_embd, n_vocab=info.n_vocab,
            chat_template=info.chat_template,
        )
        devices = core.backend_devices()
        self._offloaded = info.n_layers_offloaded
        gpus = [d.description or d.name for d in devices if d.type == "gpu"]
        self._backend = ", ".join(gpus) if self._offloaded and gpus else "CPU"
        self._devices = tuple(d.name for d in devices)

    def __repr__(self) -> str:
        return f"Generator({self.info.path!r}, n_ctx={self.n_ctx}, adapters={sorted(self._adapters)})"

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds (prompt and generated)."""
        return self._session.n_ctx

    # Tokens -----------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` (with BOS when the model wants one and ``add_special``)."""
        return self._model.tokenize(_check_text(text, "text"), add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int], *, render_special: bool = False) -> str:
        """Text of ``tokens``; bytes that are not valid UTF-8 become U+FFFD."""
        raw = self._model.detokenize(list(tokens), render_special=render_special)
        return core.sanitize_utf8(raw)

    def format_chat(self, messages: Sequence[Message], *, add_assistant: bool = True) -> str:
        """The prompt the model's own chat template makes of ``messages``."""
        return self._model.apply_chat_template(_check_messages(messages), add_assistant=add_assistant)

    # LoRA adapters ------------------------------------------------------------

    def load_adapter(self, path: str | os.PathLike[str], *, name: str | None = None) -> str:
        """Load a GGUF LoRA adapter once for this model; returns its name (default: the file stem).

        Loading does not attach it: pass ``adapters={name: scale}`` per request, or
        :meth:`attach` it for every request.

        Raises:
            AdapterError: missing file, not a LoRA GGUF, or made for another model.
        """
        file = Path(path)
        name = name or file.stem
        if not file.is_file():
            raise AdapterError(f"no adapter file at '{file}': check the path")
        if name in self._adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded: pass another name=")
        self._adapters[name] = core.LoraAdapter(self._model, str(file))
        return name

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters."""
        return tuple(self._adapters)

    def attach(self, name: str, scale: float = 1.0) -> None:
        """Use adapter ``name`` at ``scale`` for every request that does not pass ``adapters=``."""
        self._resolve_adapters({name: scale})
        self._attached[name] = float(scale)

    def detach(self, name: str | None = None) -> None:
        """Stop using adapter ``name`` by default (all adapters when None). It stays loaded."""
        if name is None:
            self._attached.clear()
        else:
            self._attached.pop(name, None)

    def _resolve_adapters(self, adapters: Mapping[str, float] | None) -> list[tuple[object, float]]:
        chosen = self._attached if adapters is None else adapters
        resolved = []
        for name, scale in chosen.items():
            if name not in self._adapters:
                raise AdapterError(f"no adapter named {name!r} is loaded (loaded: {sorted(self._adapters)}): "
                                   "call load_adapter() first")
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise InputError(f"adapter scale must be a finite number, got {scale!r} for {name!r}")
            if scale != 0:
                resolved.append((self._adapters[name], float(scale)))
        return resolved

    # Generation ---------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        repeat_penalty: float = 1.0,
        stop: Sequence[str] = (),
        grammar: str | None = None,
        sampling: SamplingConfig | None = None,
        adapters: Mapping[str, float] | None = None,
        truncate: Literal["error", "left"] = "error",
        reuse_prefix: bool = True,
    ) -> Generation:
        """Generate a completion of ``prompt`` (a string, or chat messages formatted
        with the model's own template).

        Args:
            prompt: text, or a sequence of ``{"role": ..., "content": ...}`` / ``(role, content)``.
            max_tokens: most tokens to generate (>= 1).
            temperature, top_k, top_p, repeat_penalty: sampling; ``sampling=`` overrides them.
            stop: strings that end generation; they are not part of the text.
            grammar: a GBNF grammar (rule ``root``) the output must follow.
            adapters: ``{name: scale}`` of loaded LoRA adapters for this request
                (``{}`` for none); None uses those set with :meth:`attach`.
            truncate: "error" raises ContextOverflowError when the prompt does not fit
                ``n_ctx``; "left" drops its oldest tokens instead.
            reuse_prefix: reuse the K/V of the prefix shared with the previous request.

        Raises:
            InputError, ContextOverflowError, CancelledError, AdapterError, GenerationError.
        """
        request = self._request(prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, stop, grammar,
                                sampling, adapters, truncate, reuse_prefix)
        with self._lock:
            return self._run(request, None)

    def stream(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        repeat_penalty: float = 1.0,
        stop: Sequence[str] = (),
        grammar: str | None = None,
        sampling: SamplingConfig | None = None,
        adapters: Mapping[str, float] | None = None,
        truncate: Literal["error", "left"] = "error",
        reuse_prefix: bool = True,
    ) -> TextStream:
        """Like :meth:`generate`, but yields text pieces (valid UTF-8) as they are produced.

        The concatenated pieces equal ``generate(...).text``; once exhausted, the
        stream's ``generation`` holds the full result. Closing the stream early (or
        leaving a ``with`` block) cancels generation. Argument errors raise here.
        """
        request = self._request(prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, stop, grammar,
                                sampling, adapters, truncate, reuse_prefix)
        return TextStream(self, request)

    def cancel(self) -> None:
        """Stop the request running now (from any thread); it raises CancelledError.

        Has no effect on requests that start later.
        """
        self._session.cancel()

    def reset(self) -> None:
        """Forget the KV cache, so the next request evaluates its whole prompt."""
        with self._lock:
            self._session.reset()

    def _request(self, prompt, max_tokens, temperature, top_k, top_p, repeat_penalty, stop, grammar, sampling,
                 adapters, truncate, reuse_prefix) -> _Request:
        if not _is_int(max_tokens) or max_tokens <= 0:
            raise InputError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if sampling is None:
            sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                                      repeat_penalty=repeat_penalty)
        sampling.validate()
        if isinstance(stop, str):
            stop = [stop]
        stop = list(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise InputError(f"stop must be a list of non-empty strings, got {stop!r}")
        if grammar is not None:
            _check_text(grammar, "grammar")
        if truncate not in ("error", "left"):
            raise InputError(f"truncate must be 'error' or 'left', got {truncate!r}")
        if isinstance(prompt, str):
            text = _check_text(prompt, "prompt")
        else:
            text = self.format_chat(prompt)
        options = core.SamplingOptions()
        for f in fields(SamplingConfig):
            if f.name != "seed":
                setattr(options, f.name, getattr(sampling, f.name))
        options.seed = self.config.seed if sampling.seed is None else sampling.seed
        options.grammar = grammar or ""
        return _Request(text, max_tokens, options, stop, self._resolve_adapters(adapters), truncate == "left",
                        bool(reuse_prefix))

    def _run(self, request: _Request, on_piece) -> Generation:
        """Run one request; the caller holds ``self._lock``."""
        result = self._session.generate(
            request.prompt, max_tokens=request.max_tokens, sampling=request.sampling, stop=request.stop,
            adapters=request.adapters, truncate_left=request.truncate_left, reuse_prefix=request.reuse_prefix,
            on_piece=on_piece)
        t = result.timings
        timings = GenerationTimings(
            tokenize_ms=t.tokenize_ms, prompt_tokens=t.prompt_tokens, truncated_tokens=t.truncated_tokens,
            reused_tokens=t.reused_tokens, prefill_ms=t.prefill_ms, prefill_tokens=t.prefill_tokens,
            prefill_tokens_per_s=t.prefill_tokens_per_s, ttft_ms=t.ttft_ms, decode_ms=t.decode_ms,
            decode_tokens=t.decode_tokens, decode_tokens_per_s=t.decode_tokens_per_s, total_ms=t.total_ms,
            backend=self._backend, devices=self._devices, n_gpu_layers_offloaded=self._offloaded,
        )
        return Generation(result.text, tuple(result.tokens), result.stop_reason, timings)


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode ({exc.reason} at {exc.start}): remove lone surrogates") from None
    return text


def _check_messages(messages: Sequence[Message]) -> list[tuple[str, str]]:
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
        pairs.append((_check_text(role, f"message {i} role"), _check_text(content, f"message {i} content")))
    return pairs


__all__ = ["Generation", "GenerationTimings", "Generator", "GeneratorConfig", "ModelInfo", "SamplingConfig",
           "TextStream"]
