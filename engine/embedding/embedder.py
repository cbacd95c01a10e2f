"""Sentence embeddings on CPU (or another onnxruntime provider) from an exported BERT graph.

``Embedder`` tokenizes with the model's ``tokenizer.json`` (HF ``tokenizers``) and runs
the ONNX graph written by ``engine.embedding.export``, whose output is already mean-pooled
and L2-normalised. Two paths:

* ``embed(texts)`` for throughput: texts are tokenized in one parallel call, sorted by
  token length, cut into batches that are padded only to their own longest text, and
  put back in the caller's order.
* ``embed_query(text)`` for latency: one text, no padding, preallocated input buffers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from engine.embedding.export import OUTPUT_NAME
from engine.errors import InputError, ModelError
from engine.generation.types import check_text  # the one str + UTF-8 check of caller text
from engine.hardware import max_threads, physical_cores
from engine.models.registry import FP32_NAME, INT8_FULL_NAME, INT8_NAME
from engine.shutdown import NATIVE

_FILES = {"fp32": FP32_NAME, "int8": INT8_NAME, "int8-full": INT8_FULL_NAME}
Variant = Literal["fp32", "int8", "int8-full"]
_TOKENIZER = "tokenizer.json"
_MAX_POSITIONS = 512
_FETCH_HINT = "run `bakeoff models fetch`"


class Embedder:
    """Turns texts into L2-normalised float32 vectors (384 dims for all-MiniLM-L6-v2).

    Args:
        model: a manifest name (looked up in the model cache with
            ``engine.models.model_dir``) or a folder holding ``tokenizer.json`` and
            the graphs ``engine.embedding.export`` writes (``model.onnx``, ``model.int8.onnx``,
            ``model.int8-full.onnx``).
        variant: ``"fp32"`` (reference accuracy), ``"int8"`` (dynamically quantized,
            faster; cosine to fp32 >= 0.99 on average, see ``engine.embedding.quantize``) or
            ``"int8-full"`` (every matmul int8: fastest on a short query; what an fp32-built
            knowledge base embeds its queries with, ``engine/kb/query_cache.py``).
        threads: onnxruntime intra-op threads; ``engine.hardware.physical_cores()``
            (one per physical core this process may use) when ``None``.
        providers: onnxruntime execution providers in order of preference, e.g.
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; CPU when ``None``.
        batch_size: texts per forward pass in ``embed``.
        max_tokens: longest input in tokens, counting ``[CLS]`` and ``[SEP]``; longer
            texts are truncated to their first ``max_tokens - 2`` word pieces
            (all-MiniLM-L6-v2 was trained with 256; the model accepts up to 512).
        cache_dir: the model cache, when ``model`` is a manifest name.

    Raises:
        InputError: an unknown model name, an unavailable provider, or a bad number.
        ModelError: the model folder or one of its files is missing or corrupted.

    ``embed`` and ``embed_query`` may be called from several threads at once.
    """

    def __init__(
        self,
        model: str | os.PathLike = "all-MiniLM-L6-v2",
        *,
        variant: Variant = "fp32",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 32,
        max_tokens: int = 256,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(variant, str) or variant not in _FILES:
            raise InputError(f"variant must be one of {', '.join(map(repr, _FILES))}, not {variant!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, not {threads!r}")
        if threads is not None and threads > (limit := max_threads()):
            raise InputError(f"threads={threads} is more than the {limit} threads allowed here (4 per usable CPU, at "
                             "least 16; ONNX Runtime takes minutes to start far more): pass fewer, or None")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
        if not isinstance(max_tokens, int) or not 3 <= max_tokens <= _MAX_POSITIONS:
            raise InputError(f"max_tokens must be an integer in [3, {_MAX_POSITIONS}], not {max_tokens!r}")
        directory = _resolve(model, cache_dir)
        _verify_cached(directory, (_TOKENIZER, _FILES[variant]))
        self.model_id: str = directory.name
        self.variant: str = variant
        self.max_tokens: int = max_tokens
        self._batch_size = batch_size
        self._made_with = (directory, threads, providers)  # for with_variant
        self._siblings: dict[tuple[str, int | None], Embedder] = {}
        self._siblings_lock = threading.Lock()
        self._tokenizer, self._counter = _load_tokenizers(directory / _TOKENIZER, max_tokens)
        self._session = _open_session(directory / _FILES[variant], threads, _check_providers(providers))
        self.providers: list[str] = list(self._session.get_providers())
        self.dim: int = int(self._session.get_outputs()[0].shape[-1])
        # The query path reuses these; ``_query_lock`` makes that safe across threads.
        self._query_ids = np.zeros((1, max_tokens), dtype=np.int64)
        self._query_mask = np.ones((1, max_tokens), dtype=np.int64)
        self._query_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Embedder(model_id={self.model_id!r}, variant={self.variant!r}, dim={self.dim}, "
                f"max_tokens={self.max_tokens}, providers={self.providers!r})")

    def with_variant(self, variant: Variant, *, threads: int | None = None) -> Embedder:
        """The same model with the other graph (same folder, providers, batch size and ``max_tokens``;
        this embedder's threads unless ``threads`` is given), made once and kept; ``self`` when it
        would be this embedder.

        Raises:
            InputError: ``variant`` is not one of the variants, or a bad ``threads``.
            ModelError: the folder has no such graph, or it is corrupted.
        """
        directory, own_threads, providers = self._made_with
        threads = own_threads if threads is None else threads
        if variant == self.variant and threads == own_threads:
            return self
        with self._siblings_lock:  # one sibling per variant and threads, however many knowledge bases ask
            if (variant, threads) not in self._siblings:
                self._siblings[variant, threads] = Embedder(
                    directory, variant=variant, threads=threads, providers=providers, batch_size=self._batch_size,
                    max_tokens=self.max_tokens)
            return self._siblings[variant, threads]

    def embed(self, texts: Sequence[str], *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed many texts.

        Args:
            texts: the texts; each longer than ``max_tokens`` tokens is truncated.
            progress: called with the number of texts done so far after each batch.

        Returns:
            ``(len(texts), dim)`` float32, C-contiguous, rows of unit L2 norm, in the
            order of ``texts``.

        Raises:
            InputError: ``texts`` is a single string or holds something other than str (or a str with a
                lone surrogate).
        """
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self._batch_size):
            rows = order[start:start + self._batch_size]
            width = int(lengths[rows[-1]])
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, index in enumerate(rows):
                n = int(lengths[index])
                ids[r, :n] = encodings[index].ids
                mask[r, :n] = 1
            out[rows] = self._run(ids, mask)
            if progress is not None:
                progress(min(start + self._batch_size, len(order)))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text with the least latency (no padding, reused buffers).

        Returns:
            ``(dim,)`` float32 of unit L2 norm, equal to ``embed([text])[0]``.

        Raises:
            InputError: ``text`` is not a str, or holds a lone surrogate.
        """
        token_ids = self._tokenizer.encode(check_text(text, "text")).ids
        n = len(token_ids)
        with self._query_lock:
            self._query_ids[0, :n] = token_ids
            vector = self._run(self._query_ids[:, :n], self._query_mask[:, :n])
        return vector[0]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the tokens of ``text``.

        Special tokens are not included and nothing is truncated, so
        ``len(token_offsets(t)) == count_tokens(t)``; ``text[start:end]`` is the
        token's text (word pieces of one word have adjacent spans).

        Raises:
            InputError: ``text`` is not a str, or holds a lone surrogate.
        """
        return list(self._counter.encode(check_text(text, "text"), add_special_tokens=False).offsets)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` without special tokens and without truncation.

        Raises:
            InputError: ``text`` is not a str, or holds a lone surrogate.
        """
        return len(self._counter.encode(check_text(text, "text"), add_special_tokens=False).ids)

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with NATIVE.call():  # ONNX Runtime releases the GIL: the process's exit waits for this call
            return self._session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]


def _resolve(model: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    """The model's folder: a path given as such, else a manifest name in the cache."""
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be a manifest name or a folder, not {type(model).__name__}")
    path = Path(model)
    if isinstance(model, os.PathLike) or path.is_dir() or os.sep in str(model) or str(model).startswith("."):
        if not path.is_dir():
            raise ModelError(f"model folder {path} does not exist: {_FETCH_HINT}, or give an existing folder")
        return path
    from engine.models.cache import model_dir

    return model_dir(str(model), None if cache_dir is None else Path(cache_dir))


def _load_tokenizers(path: Path, max_tokens: int):
    """Two tokenizers: one truncating to ``max_tokens`` for the model, one untouched for counting."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
        counter = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for missing or malformed files
        raise ModelError(f"cannot load the tokenizer {path} ({error}): {_FETCH_HINT}") from error
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    counter.no_padding()
    counter.no_truncation()
    return tokenizer, counter


def _check_providers(providers: Sequence[str] | None) -> list[str]:
    import onnxruntime

    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = onnxruntime.get_available_providers()
    try:
        wanted = list(providers)
    except TypeError:
        raise InputError(f"providers must be a list of provider names, not {type(providers).__name__}") from None
    unknown = [p for p in wanted if p not in available]
    if unknown or not wanted:
        raise InputError(
            f"execution provider(s) {unknown or wanted} not available in this onnxruntime build: "
            f"available are {', '.join(available)}"
        )
    return wanted


def _open_session(path: Path, threads: int | None, providers: list[str]):
    import onnxruntime

    if not path.is_file():
        raise ModelError(f"{path} is missing: {_FETCH_HINT}")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped Fail/InvalidProtobuf errors
        raise ModelError(f"cannot load {path} ({error}): the file is corrupted; {_FETCH_HINT} --force") from error
    names = [o.name for o in session.get_outputs()]
    if names != [OUTPUT_NAME] or [i.name for i in session.get_inputs()] != ["input_ids", "attention_mask"]:
        raise ModelError(f"{path} is not an embedder graph from engine.embedding.export (outputs {names}): "
                         f"{_FETCH_HINT} --force")
    return session


def _verify_cached(directory: Path, names: tuple[str, ...]) -> None:
    """Check the files about to be loaded against their sha256 when ``directory`` is a model-cache folder."""
    from engine.models.cache import verify_file

    for name in names:
        verify_file(directory / name)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise InputError("texts must be a sequence of str, not a single string: wrap it in a list")
    if isinstance(texts, (bytes, bytearray)):
        raise InputError(f"texts must be a sequence of str, not {type(texts).__name__}: decode it, wrap it in a list")
    try:
        items = list(texts)
    except TypeError as error:
        raise InputError(f"texts must be a sequence of str, not {type(texts).__name__}") from error
    for index, item in enumerate(items):
        check_text(item, f"texts[{index}]")
    return items
