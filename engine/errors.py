"""One error hierarchy for the whole engine.

Every failure a caller can act on is one of these types, and every message says
what happened and what to do about it. Built-in names (``IndexError``,
``FileNotFoundError``) are never shadowed.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error raised by ``engine``."""


class InputError(EngineError, ValueError):
    """An argument or a document given by the caller is not usable as it is."""


class ModelError(EngineError):
    """A model file is missing, corrupted, of the wrong kind, or failed to load."""


class ModelFetchError(ModelError):
    """A model could not be provisioned into the cache (source unreachable, checksum mismatch)."""


class KnowledgeBaseError(EngineError):
    """A knowledge base on disk cannot be opened or written."""


class KnowledgeBaseMismatchError(KnowledgeBaseError):
    """A knowledge base was built with another embedder, dimension or format version."""


class KnowledgeBaseCorruptError(KnowledgeBaseError):
    """A knowledge base file is missing, truncated or fails its checksum."""


class KnowledgeBaseLockedError(KnowledgeBaseError):
    """Another process is writing the knowledge base right now."""


class ChunkingMismatchError(InputError):
    """Documents were to be added with another chunking than the knowledge base was built with.

    ``built`` and ``asked`` map ``chunk_tokens``/``overlap_tokens`` to values: what the knowledge
    base has, and the differing values the caller gave (adding never re-chunks; rebuild instead).
    """

    def __init__(self, message: str, built: dict[str, int], asked: dict[str, int]) -> None:
        super().__init__(message)
        self.built = built
        self.asked = asked


class DocumentError(InputError):
    """A document cannot be read as UTF-8 text (binary, other encoding, unreadable)."""


class GenerationError(EngineError):
    """Generation failed or was refused (context overflow, busy generator)."""


class ContextOverflowError(GenerationError, InputError):
    """The prompt does not fit in the context window."""


class GeneratorBusyError(GenerationError):
    """Another thread is already generating on this ``Generator``."""


class CancelledError(GenerationError):
    """Generation was cancelled by the caller through ``Generator.cancel()``."""


class AdapterError(ModelError):
    """A LoRA adapter is missing, corrupted, or does not match the base model."""


class EngineClosedError(EngineError):
    """The object (or the process) is closing or closed: no new request is accepted."""


class MissingExtraError(EngineError, ImportError):
    """An optional dependency group is not installed; the message names the extra."""


__all__ = [
    "AdapterError",
    "CancelledError",
    "ChunkingMismatchError",
    "ContextOverflowError",
    "DocumentError",
    "EngineClosedError",
    "EngineError",
    "GenerationError",
    "GeneratorBusyError",
    "InputError",
    "KnowledgeBaseCorruptError",
    "KnowledgeBaseError",
    "KnowledgeBaseLockedError",
    "KnowledgeBaseMismatchError",
    "MissingExtraError",
    "ModelError",
    "ModelFetchError",
]


class BuildMismatchError(EngineError, ImportError):
    """engine._core was built against another llama-cpp-python than the one installed."""


__all__ += ["BuildMismatchError"]
