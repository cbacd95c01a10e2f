"""Guarded imports of the optional ``finetune`` extra (PyTorch and the gguf package).

Every module of ``engine.finetune`` that needs them imports them through these
functions, so a missing extra surfaces as one typed error that names the extra,
not as a bare ``ModuleNotFoundError`` from deep inside the recipe.
"""

from __future__ import annotations

from types import ModuleType

from engine.errors import MissingExtraError

_HINT = 'install the "finetune" extra: pip install "bakeoff-engine[finetune]"'


def require_torch() -> ModuleType:
    """Return the ``torch`` module.

    Raises:
        MissingExtraError: PyTorch is not installed.
    """
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(f"fine-tuning needs PyTorch, which is not installed: {_HINT}") from exc
    return torch


def require_gguf() -> ModuleType:
    """Return the ``gguf`` module (llama.cpp's GGUF reader/writer and quantizers).

    Raises:
        MissingExtraError: the gguf package is not installed.
    """
    try:
        import gguf
    except ImportError as exc:
        raise MissingExtraError(f"reading and writing GGUF files needs the gguf package: {_HINT}") from exc
    return gguf
