"""Text generation with a quantized GGUF model, LoRA adapters and prefix KV reuse.

The decode loop, the KV cache and the timings live in ``engine._core`` (C++, GIL
released); this module holds the policy: argument checking, chat formatting,
which adapters a request uses, which requests a cancel reaches, and the result types.

Example::

    gen = Generator("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048)
    out = gen.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=32)
    print(out.text, out.timings.ttft_ms)
    for piece in gen.stream("Once upon a time", max_tokens=32):
        print(piece, end="")

Thread-safety: one ``Generator`` runs one request at a time. Concurrent calls
from several threads are serialised by a lock (each waits its turn); use
``cancel()`` from another thread to stop the requests submitted so far. Ctrl-C
interrupts a request running on the main thread (KeyboardInterrupt); the
Generator stays usable.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Unpack

from engine._native import core
from engine.errors import InputError, ModelError
from engine.generation.adapters import Adapters
from engine.generation.requests import Request, RequestOptions, build_request
from engine.generation.splice import ComputedStates
from engine.generation.stream import TextStream
from engine.generation.types import (  # noqa: F401  (re-exported: the public names of this module)
    Generation,
    GenerationTimings,
    GeneratorConfig,
    Message,
    ModelInfo,
    Prompt,
    SamplingConfig,
    TokenIds,
    chat_roles,
    check_messages,
    check_text,
    check_token_ids,
)
from engine.hardware import default_threads, use_extra_buffer_types
from engine.models import gguf_check
from engine.models.cache import verify_file
from engine.shutdown import NATIVE, CallGate


class Generator:
    """A GGUF model loaded once (memory-mapped), with one context for generation.

    Args:
        model_path: a ``.gguf`` model (a merged fine-tune works like any model).
        n_ctx, n_threads, n_batch, n_gpu_layers, flash_attn, kv_type, seed, extra_buffers, splice_slots:
            see :class:`GeneratorConfig`; or pass ``config=`` instead.

    A model of the model cache (``engine.models``) is checked against its sha256
    first (a ``stat`` when unchanged since the last check); any other file's GGUF
    header is checked by :func:`engine.models.gguf_check.check_gguf` before llama.cpp reads it.

    Raises:
        ModelError: the file is missing, not GGUF, truncated or damaged (a cached model
            whose sha256 changed: fetch it again), or of an architecture this llama.cpp
            does not support.
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
        splice_slots: int = 0,
        config: GeneratorConfig | None = None,
    ) -> None:
        if config is None:
            config = GeneratorConfig(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                                     flash_attn=flash_attn, kv_type=kv_type, seed=seed, extra_buffers=extra_buffers,
                                     splice_slots=splice_slots)
        config.validate()
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"no model file at '{path}': check the path, or fetch it with engine.models.fetch()")
        if not verify_file(path):
            gguf_check.check_gguf(path)
        self.config = config
        self._lock = threading.Lock()  # held for the whole of one request
        # Cancel tokens of the requests submitted and not finished (see cancel()).
        self._pending: set[core.CancelToken] = set()
        self._pending_lock = threading.Lock()
        self._gate = CallGate("this Generator")
        NATIVE.on_close(self, Generator.cancel)
        threads = config.n_threads or default_threads()
        self._model = core.Model(str(path), n_gpu_layers=config.n_gpu_layers, use_mmap=config.use_mmap,
                                 use_extra_bufts=use_extra_buffer_types(config.extra_buffers))
        self._adapters = Adapters(self._model)
        flash = -1 if config.flash_attn is None else int(config.flash_attn)
        self._session = core.Session(self._model, n_ctx=config.n_ctx, n_batch=config.n_batch, n_threads=threads,
                                     n_threads_batch=config.n_threads_batch or threads, flash_attn=flash,
                                     kv_type=config.kv_type, splice_slots=config.splice_slots)
        if self._session.n_ctx != config.n_ctx:  # GeneratorConfig refuses the sizes this llama.cpp changes
            raise InputError(f"llama.cpp made a context of {self._session.n_ctx} tokens for n_ctx={config.n_ctx}: "
                             f"pass n_ctx={self._session.n_ctx}")
        info = self._model.info
        self.info = ModelInfo(context_length=info.n_ctx_train, **{
            f.name: getattr(info, f.name) for f in fields(ModelInfo) if f.name != "context_length"})
        self._chat_roles = chat_roles(self.info.chat_template)
        devices = core.backend_devices()
        self._offloaded = info.n_layers_offloaded
        gpus = [d.description or d.name for d in devices if d.type == "gpu"]
        self._backend = ", ".join(gpus) if self._offloaded and gpus else "CPU"
        self._devices = tuple(d.name for d in devices)

    def __repr__(self) -> str:
        return f"Generator({self.info.path!r}, n_ctx={self.n_ctx}, adapters={sorted(self._adapters.names)})"

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds (prompt and generated)."""
        return self._session.n_ctx

    # Tokens -----------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` (with BOS when the model wants one and ``add_special``).

        Pass ``parse_special=True`` for a prompt made by :meth:`format_chat`, so its
        template markers become the special tokens a text prompt would get.
        """
        return self._model.tokenize(check_text(text, "text"), add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: TokenIds, *, render_special: bool = False) -> str:
        """Text of ``tokens``; bytes that are not valid UTF-8 become U+FFFD.

        Raises:
            InputError: an id is not an int in ``[0, n_vocab)``.
        """
        ids = check_token_ids(tokens, self.info.n_vocab, "tokens")
        return core.sanitize_utf8(self._model.detokenize(ids, render_special=render_special))

    @property
    def chat_roles(self) -> tuple[str, ...]:
        """The message roles the model's chat template knows: system, user, assistant (and tool
        when the template names it); () when the model has no chat template."""
        return self._chat_roles

    def format_chat(self, messages: Sequence[Message], *, add_assistant: bool = True) -> str:
        """The prompt the model's own chat template makes of ``messages``.

        Raises:
            InputError: a message is not a (role, content) of str, or its role is not one
                of :attr:`chat_roles`; the model has no chat template.
        """
        pairs = check_messages(messages, self.chat_roles or None)
        return self._model.apply_chat_template(pairs, add_assistant=add_assistant)

    # LoRA adapters ------------------------------------------------------------

    def load_adapter(self, path: str | os.PathLike[str], *, name: str | None = None) -> str:
        """Load a GGUF LoRA adapter once for this model; returns its name (default: the file stem).

        Loading does not attach it: pass ``adapters={name: scale}`` per request, or
        :meth:`attach` it for every request.

        The file's GGUF header is checked (:func:`engine.models.gguf_check.check_gguf`) before
        llama.cpp reads it.

        Raises:
            AdapterError: missing file, not a LoRA GGUF, a damaged header, or made for another model.
        """
        return self._adapters.load(path, name)

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the loaded adapters."""
        return self._adapters.names

    def adapter_metadata(self, name: str) -> dict[str, str]:
        """The GGUF key/value metadata of loaded adapter ``name``, values as text.

        The fine-tune recipe records what the adapter was trained with here (e.g. the
        key ``bakeoff.system_prompt``); llama.cpp's own keys such as
        ``adapter.lora.alpha`` are included.

        Raises:
            AdapterError: no adapter of that name is loaded.
        """
        return dict(self._adapters.get(name).metadata)

    def attach(self, name: str, scale: float = 1.0) -> None:
        """Use adapter ``name`` at ``scale`` for every request that does not pass ``adapters=``."""
        self._adapters.attach(name, scale)

    def detach(self, name: str | None = None) -> None:
        """Stop using adapter ``name`` by default (all adapters when None). It stays loaded."""
        self._adapters.detach(name)

    # Generation ---------------------------------------------------------------

    def generate(self, prompt: Prompt, **options: Unpack[RequestOptions]) -> Generation:
        """Generate a completion of ``prompt``: a string, chat messages formatted with the
        model's own template, or token ids.

        Args:
            prompt: text (tokenized with BOS, special-token text such as ``<|im_end|>``
                read as those tokens); or a sequence of ``{"role": ..., "content": ...}`` /
                ``(role, content)``; or token ids (ints in ``[0, n_vocab)``, e.g. from
                :meth:`tokenize`), used as they are: nothing is tokenized again and
                ``timings.tokenize_ms`` is 0.
            **options: see :class:`~engine.generation.requests.RequestOptions`; all optional:
            max_tokens: most tokens to generate (>= 1; 128).
            temperature, top_k, top_p, repeat_penalty: sampling (0.0, 40, 0.95, 1.0); ``sampling=``
                (a :class:`SamplingConfig`) overrides them.
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
            splices: chunk states (:meth:`chunk_state`) whose K/V stand in for their prompt
                tokens, in prompt order, at most ``splice_slots``; the prompt must be token ids.
                Only the tokens around them are evaluated. Prefix reuse stops at the first.

        Raises:
            InputError, ContextOverflowError, AdapterError, GenerationError.
            CancelledError: :meth:`cancel` was called after this call began.
            KeyboardInterrupt: Ctrl-C while generating on the main thread.
        """
        request = self._request(prompt, options)
        return self._run(request, self._submit(), None)

    def stream(self, prompt: Prompt, **options: Unpack[RequestOptions]) -> TextStream:
        """Like :meth:`generate`, but yields text pieces (valid UTF-8) as they are produced.

        The concatenated pieces equal ``generate(...).text``; once exhausted, the
        stream's ``generation`` holds the full result. Closing the stream early, leaving
        a ``with`` block, or dropping it cancels generation. Argument errors raise here;
        the request counts as submitted from this call (see :meth:`cancel`).
        """
        request = self._request(prompt, options)
        token = self._submit()
        return TextStream(functools.partial(self._run, request, token), functools.partial(self._withdraw, token))

    def log_prob(self, context: TokenIds, continuation: TokenIds, *,
                 adapters: Mapping[str, float] | None = None) -> float:
        """Natural-log probability the model gives ``continuation`` after ``context``.

        The sum over the continuation's tokens of log p(token | context and the
        continuation tokens before it), from llama.cpp's logits (a softmax over the
        whole vocabulary, no sampling settings). The shared prefix with the previous
        request is reused, and the cache is left consistent for the next one.

        Args:
            context: token ids before the continuation (at least one, e.g. BOS).
            continuation: the token ids to score (at least one).
            adapters: ``{name: scale}`` of loaded LoRA adapters (``{}`` for none);
                None uses those set with :meth:`attach`.

        Not reached by :meth:`cancel`. Like generation with ``reuse_prefix``, evaluating
        after a reused prefix can move the result in its last bits; :meth:`reset` first
        for values that must reproduce each other exactly.

        Raises:
            InputError: an empty sequence, or ids that are not ints in ``[0, n_vocab)``.
            ContextOverflowError: context and continuation do not fit ``n_ctx``.
            AdapterError: an adapter name is not loaded.
        """
        ctx = check_token_ids(context, self.info.n_vocab, "context")
        cont = check_token_ids(continuation, self.info.n_vocab, "continuation")
        resolved = self._adapters.resolve(adapters)
        with self._native(), self._lock:
            return math.fsum(self._session.log_probs(ctx, cont, adapters=resolved))

    def chunk_state(self, prefix: TokenIds, chunk: TokenIds, *,
                    adapters: Mapping[str, float] | None = None) -> bytes:
        """llama.cpp's K/V state of ``chunk`` evaluated after ``prefix``, to splice later.

        Pass it to :meth:`generate` as ``Splice(start, state, len(chunk), len(prefix))``.
        The state belongs to this model, these adapters (a LoRA on the K/V projections
        changes K/V), this ``kv_type`` and ``flash_attn`` and this llama.cpp build; the
        cache keeps ``prefix + chunk``, so states computed one after another reuse the
        prefix. Needs ``splice_slots >= 1``. About 22.5 KiB per token for SmolLM2-135M at f16.

        Raises:
            InputError: empty or out-of-vocabulary ids, or a Generator without splice slots.
            ContextOverflowError: prefix and chunk do not fit ``n_ctx``.
            AdapterError: an adapter name is not loaded.
        """
        ctx = check_token_ids(prefix, self.info.n_vocab, "prefix")
        body = check_token_ids(chunk, self.info.n_vocab, "chunk")
        resolved = self._adapters.resolve(adapters)
        with self._native(), self._lock:
            return self._session.chunk_state(ctx, body, adapters=resolved)

    def prefix_state(self, prefix: TokenIds, *, adapters: Mapping[str, float] | None = None) -> bytes:
        """llama.cpp's K/V state of ``prefix`` evaluated alone, in one batch, from an empty cache.

        Keep it and pass it to :meth:`chunk_states`, which restores it instead of evaluating the
        prefix again. Evaluated this one way so that it is the same bytes every time (llama.cpp's
        CPU attention takes another path for a batch under 64 tokens than for a longer one). It
        belongs to the same things a chunk state does (see :meth:`chunk_state`). The cache keeps
        the prefix. Needs ``splice_slots >= 1``.

        Raises:
            InputError, ContextOverflowError, AdapterError: as :meth:`chunk_state`.
        """
        ctx = check_token_ids(prefix, self.info.n_vocab, "prefix")
        resolved = self._adapters.resolve(adapters)
        with self._native(), self._lock:
            return self._session.prefix_state(ctx, adapters=resolved)

    def chunk_states(self, prefix: TokenIds, prefix_state: bytes, chunks: Sequence[TokenIds], *,
                     adapters: Mapping[str, float] | None = None) -> ComputedStates:
        """The K/V state of each of ``chunks`` after ``prefix``, several chunks per batch.

        ``prefix_state`` is :meth:`prefix_state`'s of the same ``prefix`` and ``adapters``: it is
        restored, not evaluated again. Up to ``splice_slots`` chunks are evaluated in one
        llama_decode, one sequence each, every chunk's cells placed so that its state is the
        same bytes whichever chunks it is computed with (csrc/chunk_states.cpp says how); more
        chunks go in further groups. Each state splices like :meth:`chunk_state`'s
        (``Splice(start, state, len(chunk), len(prefix))``), from which it differs only
        within f16 rounding. The cache keeps the prefix.

        Raises:
            InputError: empty or out-of-vocabulary ids, no chunks, a Generator without splice
                slots, or a ``prefix_state`` that does not hold ``prefix``'s positions.
            ContextOverflowError: the prefix and a chunk do not fit ``n_ctx``.
            AdapterError: an adapter name is not loaded.
        """
        ctx = check_token_ids(prefix, self.info.n_vocab, "prefix")
        bodies = [check_token_ids(chunk, self.info.n_vocab, "chunk") for chunk in chunks]
        if not isinstance(prefix_state, bytes):
            raise InputError(f"prefix_state must be the bytes prefix_state() returned, got {type(prefix_state).__name__}")
        resolved = self._adapters.resolve(adapters)
        with self._native(), self._lock:
            states, batches, groups = self._session.chunk_states(ctx, prefix_state, bodies, adapters=resolved)
        return ComputedStates(tuple(states), batches, groups)

    def cancel(self) -> None:
        """Cancel every request submitted before this call that has not finished.

        That is the running request and those still waiting their turn (a
        :meth:`generate` call, or a :meth:`stream` made and not finished); each raises
        :class:`CancelledError`. From any thread. Requests submitted afterwards are not
        affected, so with nothing submitted it does nothing.
        """
        with self._pending_lock:
            pending = list(self._pending)
        for token in pending:
            token.cancel()

    def reset(self) -> None:
        """Forget the KV cache, so the next request evaluates its whole prompt."""
        with self._lock:
            self._session.reset()

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, cancel those submitted, and wait (up to ``timeout_s``) for the running one.

        Afterwards every request raises :class:`~engine.errors.EngineClosedError`. Safe to
        call from any thread, more than once; the model is freed with the object.
        """
        self._gate.on_close(self, Generator.cancel)
        self._gate.close(timeout_s)

    @contextlib.contextmanager
    def _native(self) -> Iterator[None]:
        """Hold one native call: this generator's gate, then the process's (see :mod:`engine.shutdown`)."""
        with self._gate.call(), NATIVE.call():
            yield

    def _submit(self) -> core.CancelToken:
        """Register a new request: from now on cancel() reaches it."""
        token = core.CancelToken()
        with self._pending_lock:
            self._pending.add(token)
        return token

    def _withdraw(self, token: core.CancelToken) -> None:
        """Cancel one request (waiting or running) and forget it."""
        token.cancel()
        with self._pending_lock:
            self._pending.discard(token)

    def _request(self, prompt: Prompt, options: RequestOptions) -> Request:
        unknown = set(options) - RequestOptions.__optional_keys__
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}: the options are "
                            f"{sorted(RequestOptions.__optional_keys__)}")
        return build_request(prompt, n_vocab=self.info.n_vocab, seed=self.config.seed, format_chat=self.format_chat,
                             resolve_adapters=self._adapters.resolve, **options)

    def _run(self, request: Request, token: core.CancelToken,
             on_piece: Callable[[str], None] | None) -> Generation:
        """Run one submitted request when its turn comes (takes the lock for the call)."""
        try:
            with self._native(), self._lock:
                result = self._session.generate(
                    request.prompt, max_tokens=request.max_tokens, sampling=request.sampling, stop=request.stop,
                    adapters=request.adapters, truncate_left=request.truncate_left,
                    reuse_prefix=request.reuse_prefix, cancel=token, on_piece=on_piece,
                    splices=[s.native() for s in request.splices])
        finally:
            with self._pending_lock:
                self._pending.discard(token)
        measured = {f.name: getattr(result.timings, f.name) for f in fields(GenerationTimings)
                    if hasattr(result.timings, f.name)}
        timings = GenerationTimings(**measured, backend=self._backend, devices=self._devices,
                                    n_gpu_layers_offloaded=self._offloaded,
                                    extra_buffer_types=self._model.info.extra_buffer_types)
        return Generation(result.text, tuple(result.tokens), result.stop_reason, timings)


__all__ = ["Generation", "GenerationTimings", "Generator", "GeneratorConfig", "ModelInfo", "SamplingConfig",
           "TextStream"]
