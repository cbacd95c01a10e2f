"""The embedder of a knowledge base: the default one, the one its manifest records, the check
that an embedder matches it, and queries cut to the embedder's window.

``engine.embedding.embedder`` is imported only when an embedder must be made here, so opening a
knowledge base with an ``Embedder`` in hand does not pay for it twice.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError, KnowledgeBaseMismatchError
from engine.kb.manifest import Manifest


def default_embedder(model: str | None = None, variant: str = "fp32"):
    """The embedder a knowledge base uses when none is given (imported here: kb needs it only then)."""
    from engine.embedding.embedder import Embedder
    from engine.models import DEFAULT_EMBEDDER

    return Embedder(model or DEFAULT_EMBEDDER, variant=variant)  # type: ignore[arg-type]  # checked by Embedder


def recorded_embedder(directory: Path, current: Manifest):
    """The embedder model and variant the manifest records, from the model cache."""
    try:
        return default_embedder(current.embedder_model, current.embedder_variant)
    except InputError:
        raise KnowledgeBaseMismatchError(
            f"knowledge base {directory} was built with embedder {current.embedder_model}, which is not a model "
            f"`bakeoff models` knows: open it with embedder=Embedder(<that model's folder>)") from None


def check_embedder(directory: Path, current: Manifest, embedder) -> None:
    """Refuse an embedder of another model or dimension than the one ``directory`` was built with."""
    if current.embedder_model != embedder.model_id or current.dim != embedder.dim:
        raise KnowledgeBaseMismatchError(
            f"knowledge base {directory} was built with embedder {current.embedder_model} ({current.dim} dims), "
            f"opened with {embedder.model_id} ({embedder.dim} dims): rebuild with `bakeoff index --rebuild`")


def truncate_query(query: str, embedder) -> tuple[str, bool]:
    """Cut ``query`` to what the embedder sees (max_tokens minus its 2 specials); cheap for short queries."""
    limit = embedder.max_tokens - 2
    if len(query) <= limit:
        return query, False
    offsets = embedder.token_offsets(query)
    if len(offsets) <= limit:
        return query, False
    return query[: offsets[limit - 1][1]], True
