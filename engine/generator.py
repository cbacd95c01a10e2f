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
from typing import Literal

from engine._native import core
from engine.errors import AdapterError, InputError, ModelError
from engine.generation_types import (  # noqa: F401  (re-exported: the public names of this module)
    KV_TYPES,
    Generation,
    GenerationTimings,
    GeneratorConfig,
    Message,
    ModelInfo,
    Prompt,
    SamplingConfig,
    _is_int,
)
from engine.hardware import use_extra_buffer_types
from engine.text_stream import TextStream

def _default_threads() -> int:
    """Half the CPUs this process may use (about the physical cores), as llama-cpp-python does."""
    return max(1, _usable_cpus() // 2)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        n_ctx, n_threads, n_batch, n_gpu_layers, flash_attn, kv_type, seed, extra_buffers:
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
        extra_buffers: str = "auto",
        config: GeneratorConfig | None = None,
    ) -> None:
        if config is None:
            config = GeneratorConfig(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                                     flash_attn=flash_attn, kv_type=kv_type, seed=seed, extra_buffers=extra_buffers)
        config.validate()
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"no model file at '{path}': check the path, or fetch it with engine.models.fetch()")
        self.config = config
        self._lock = threading.Lock()
        self._adapters: dict[str, object] = {}
        self._attached: dict[str, float] = {}
        threads = config.n_threads or _default_threads()
        self._model = core.Model(str(path), n_gpu_layers=config.n_gpu_layers, use_mmap=config.use_mmap,
                                 use_extra_bufts=use_extra_buffer_types(config.extra_buffers))
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
                The tokens after the prefix are then computed in a smaller batch, whose
                float rounding can differ in the last bits from a full prefill, so a greedy
                answer at a near-tie may differ from the one without reuse; pass False for
                runs that must reproduce each other bit for bit.

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
            extra_buffer_types=self._model.info.extra_buffer_types,
        )
        return Generation(result.text, tuple(result.tokens), result.stop_reason, timings)


def fastest_thread_count(model_path: str | os.PathLike[str], candidates: Sequence[int] | None = None, *,
                         prompt_tokens: int = 192, rounds: int = 2, **config) -> tuple[int, dict[int, float]]:
    """Measure which generation thread count answers fastest on this machine, now.

    More threads than free cores can make llama.cpp many times slower on a busy
    machine, and fewer leave an idle one half used, so no fixed default is right
    everywhere. Each candidate prefills a ``prompt_tokens``-token prompt and decodes 8
    tokens, ``rounds`` times interleaved with the others; the best time counts.

    Args:
        model_path: the GGUF to measure with.
        candidates: thread counts to try (default: 1, half the CPUs and all of them).
        prompt_tokens: prompt length of the probe (a RAG prompt is a few hundred).
        rounds: interleaved repetitions per candidate.
        **config: other ``Generator`` settings (e.g. ``extra_buffers``).

    Returns:
        The fastest count, and each candidate's best probe time in milliseconds.
    """
    counts = sorted(set(candidates or (1, _default_threads(), _usable_cpus())))
    if any(not _is_int(n) or n < 1 for n in counts):
        raise InputError(f"candidates must be integers >= 1, got {candidates!r}")
    generators = {n: Generator(model_path, n_threads=n, n_ctx=prompt_tokens + 64, **config) for n in counts}
    probe = generators[counts[0]].detokenize(list(range(1000, 1000 + prompt_tokens)))
    best = {n: math.inf for n in counts}
    greedy = SamplingConfig(ignore_eos=True)
    for _ in range(rounds):
        for n, generator in generators.items():
            timings = generator.generate(probe, max_tokens=8, sampling=greedy, reuse_prefix=False,
                                         truncate="left").timings
            best[n] = min(best[n], timings.total_ms)
    return min(counts, key=lambda n: best[n]), best


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
           "TextStream", "fastest_thread_count"]
