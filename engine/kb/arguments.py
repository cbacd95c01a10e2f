"""What ``KnowledgeBase`` accepts from its caller: the argument checks of its methods.

Each check raises :class:`InputError` with the value it refused and what would do;
they run before any work, so a refused call changes nothing on disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np

from engine.errors import InputError
from engine.kb.documents import MAX_DOCUMENT_MB

#: Documents: a ``.txt``/``.md`` file, a folder (recursive), a glob, or a list of them.
PathsLike = Iterable[str | os.PathLike[str]] | str | os.PathLike[str]


def check_search(query: object, k: object, candidates: object, mmr_lambda: object, w_dense: object,
                 w_lexical: object, k_rrf: object) -> None:
    """Refuse the arguments of ``KnowledgeBase.search`` that cannot give a ranking."""
    check_query(query)
    if not _is_count(k):
        raise InputError(f"k={k!r}: ask for at least one hit (k >= 1)")
    if not _is_count(candidates):
        raise InputError(f"candidates={candidates!r}: each search stage needs at least one candidate (>= 1)")
    if not _is_number(mmr_lambda) or not 0.0 <= mmr_lambda <= 1.0:  # type: ignore[operator]
        raise InputError(f"mmr_lambda={mmr_lambda!r} must be between 0 (diversity only) and 1 (relevance only)")
    weights = (w_dense, w_lexical, k_rrf)
    # NaN and infinity are not numbers here (_is_number): either would make every fused score NaN.
    # The best fused score, (w_dense + w_lexical) / (k_rrf + 1) at most, must be finite and above 0.
    if (not all(_is_number(w) and w >= 0 for w in weights)  # type: ignore[operator]
            or not 0 < (w_dense + w_lexical) / (k_rrf + 1) < math.inf):  # type: ignore[operator]
        raise InputError(f"w_dense={w_dense!r}, w_lexical={w_lexical!r}, k_rrf={k_rrf!r}: the fusion needs "
                         "finite numbers >= 0 and one weight above 0 (defaults 1.0, 0.75 (2.0 for a query naming "
                         "a code identifier), 10.0)")


def check_query(query: object) -> None:
    """Refuse a query that is not a str, is empty or whitespace, or is not valid Unicode text."""
    if not isinstance(query, str):
        raise InputError(f"the query must be a str, not {type(query).__name__}: pass the question as text"
                         + (" (decode bytes first, e.g. query.decode('utf-8'))" if isinstance(query, bytes) else ""))
    if not query.strip():
        raise InputError("the query is empty: ask a question or give keywords")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"the query holds a lone surrogate (U+{ord(query[error.start]):04X}) at character "
                         f"{error.start}, which is not text: decode the input with errors='replace', or drop "
                         f"that character") from None


def check_limit(max_document_mb: object) -> None:
    """Refuse a ``max_document_mb`` that is not a positive number (``inf``: no limit)."""
    if isinstance(max_document_mb, bool) or not isinstance(max_document_mb, (int, float)) or not max_document_mb > 0:
        raise InputError(f"max_document_mb={max_document_mb!r} must be a positive number of MiB "
                         f"(default {MAX_DOCUMENT_MB:g})")


def describe(paths: PathsLike) -> str:
    """The documents a caller gave, as they gave them, for a message."""
    if isinstance(paths, (str, os.PathLike)):
        return os.fspath(paths)
    return ", ".join(os.fspath(p) for p in paths) or "(no paths)"


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


def _is_number(value: object) -> bool:
    """A finite real number (not a bool; not NaN, not infinite, not an int beyond float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
