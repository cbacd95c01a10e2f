"""The query embedder of a knowledge base and its cache of exact repeats.

Two decisions a user can notice:

- **Queries of an fp32-built knowledge base are embedded with the int8-full graph** of the same
  model (``query_variant="auto"``, the default): every weight matmul int8, where the int8 graph
  that embeds an int8 knowledge base's documents keeps the FFN-down matmuls fp32. The query
  embedding is most of a search's time (the hybrid search after it is 1-2 ms at 10k chunks).
  ``bench/bench_embed.py`` ``test_query_latency_interleaved`` (300 distinct query-sized sentences,
  the graphs interleaved, 2 cores kept busy by other jobs, load 11): int8-full 0.44x fp32's time,
  int8 0.54x (int8-full/int8 0.82x); on the quiet machine int8 was 0.69x fp32 (int8-full not
  measured quiet). int8-full query vectors searched against the fp32 chunk
  vectors lose nothing on the bundled set: recall@4 96.0 % on 878 questions, as with fp32
  queries (95.9 % with the int8 graph's; ``bench/bench_retrieval.py``
  ``test_bundled_qa_int8_queries``). Documents are still embedded with the embedder the
  knowledge base was built with. A folder exported before int8-full existed falls back to its
  int8 graph. The cost is a second ONNX Runtime session: loading a knowledge base takes about
  80-90 MiB more resident memory (``bench/bench_peers.py``). ``query_variant="fp32"`` keeps
  fp32 queries (the reference, with the embedder as given); ``"int8"`` and ``"int8-full"`` ask
  for that graph always. The quantized query graph runs on as many threads as the embedder
  given: on the quiet 2-core machine one thread was 1.8-1.9x slower per query (README); on the
  same machine kept busy by other jobs one thread did as well back-to-back and better after
  idle, which does not make it the default for a machine of one's own.
- **A repeated query is not embedded again**: an LRU of the last ``size`` query texts (after
  cutting to the embedder's window) and their vectors, per knowledge base object. The query
  embedder of an open knowledge base never changes, so entries never go stale. Vectors are
  returned read-only, shared between the searches that asked for the same text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from engine.errors import InputError, ModelError

QUERY_VARIANTS = ("auto", "fp32", "int8", "int8-full")
#: Query vectors a knowledge base keeps (384 float32 each: 1.5 KiB; 1024 of them 1.5 MiB).
QUERY_CACHE_SIZE = 1024


def query_embedder(embedder, built_variant: str, query_variant: str):
    """The embedder for the queries of a knowledge base built with ``built_variant`` and opened
    with ``embedder`` (see the module docstring for ``query_variant``).

    With ``"auto"``, an fp32 embedder on an fp32-built knowledge base gives its int8-full sibling
    (``Embedder.with_variant``), or its int8 one in a folder exported before int8-full existed;
    an embedder without either (a custom class, a folder without int8 graphs) is used as it is.
    Any other pairing keeps ``embedder``: it is what the caller chose. ``"int8"`` and
    ``"int8-full"`` ask for that graph whatever the knowledge base was built with.

    Raises:
        InputError: ``query_variant`` is not one of ``QUERY_VARIANTS``, or names a variant that
            ``embedder`` cannot give.
        ModelError: the requested variant's graph is missing or corrupted.
    """
    if not isinstance(query_variant, str) or query_variant not in QUERY_VARIANTS:
        raise InputError(f"query_variant must be one of {', '.join(QUERY_VARIANTS)}, not {query_variant!r}")
    variant = getattr(embedder, "variant", None)
    if query_variant == "auto":
        if variant != "fp32" or built_variant != "fp32" or not hasattr(embedder, "with_variant"):
            return embedder
        for quantized in ("int8-full", "int8"):  # a folder exported before int8-full holds int8 only
            try:
                return embedder.with_variant(quantized)
            except ModelError:
                continue
        return embedder  # a folder of one's own with no int8 graph: fp32 queries, as before
    if variant == query_variant:
        return embedder
    if not hasattr(embedder, "with_variant"):
        raise InputError(f"query_variant={query_variant!r} needs an Embedder that has that variant "
                         f"({type(embedder).__name__} has no with_variant): pass query_variant='auto'")
    return embedder.with_variant(query_variant)


class QueryCache:
    """A bounded, thread-safe LRU of query text -> query vector in front of ``embed``.

    Args:
        embed: text -> vector (the query embedder's ``embed_query``).
        size: most entries kept; 0 keeps none (every query is embedded).
    """

    def __init__(self, embed: Callable[[str], np.ndarray], size: int = QUERY_CACHE_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"query_cache_size must be an integer >= 0, not {size!r}")
        self._embed = embed
        self._size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def vector(self, text: str) -> tuple[np.ndarray, bool]:
        """The vector of ``text`` (float32, read-only) and whether it came from the cache."""
        with self._lock:
            found = self._vectors.get(text)
            if found is not None:
                self._vectors.move_to_end(text)
                self.hits += 1
                return found, True
            self.misses += 1
        # Embedded outside the lock: other queries are not held up; two threads missing on the
        # same text both embed it and store equal vectors.
        vector = np.array(self._embed(text), dtype=np.float32)  # a copy of our own, then frozen
        vector.setflags(write=False)
        if self._size:
            with self._lock:
                self._vectors[text] = vector
                self._vectors.move_to_end(text)
                while len(self._vectors) > self._size:
                    self._vectors.popitem(last=False)
        return vector, False
