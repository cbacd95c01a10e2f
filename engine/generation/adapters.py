"""The LoRA adapters a generator has loaded, which it uses by default, and which one request uses.

Loading checks the file's GGUF header (:func:`engine.models.gguf_check.check_gguf`) before
llama.cpp reads it; a request names adapters with scales (``{name: scale}``) or takes
the attached defaults. ``Generator`` owns one of these and exposes it through its
``load_adapter``/``attach``/``detach``/``adapter_metadata`` methods.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from engine._native import core
from engine.errors import AdapterError, InputError
from engine.models import gguf_check


class Adapters:
    """Loaded adapters of one model, by name, and the attached defaults with their scales."""

    def __init__(self, model: core.Model) -> None:
        self._model = model
        self._loaded: dict[str, core.LoraAdapter] = {}
        self._attached: dict[str, float] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the loaded adapters, in load order."""
        return tuple(self._loaded)

    def load(self, path: str | os.PathLike[str], name: str | None) -> str:
        """Load a GGUF LoRA file under ``name`` (default: the file stem); see ``Generator.load_adapter``."""
        file = Path(path)
        name = file.stem if name is None else name
        if not isinstance(name, str) or not name:
            raise InputError(f"adapter name must be a non-empty str, got {name!r}")
        if not file.is_file():
            raise AdapterError(f"no adapter file at '{file}': check the path")
        if name in self._loaded:
            raise AdapterError(f"an adapter named {name!r} is already loaded: pass another name=")
        gguf_check.check_gguf(file, adapter=True)
        self._loaded[name] = core.LoraAdapter(self._model, str(file))
        return name

    def get(self, name: str) -> core.LoraAdapter:
        """The loaded adapter ``name``; AdapterError naming the loaded ones otherwise."""
        if not isinstance(name, str) or name not in self._loaded:
            raise AdapterError(f"no adapter named {name!r} is loaded (loaded: {sorted(self._loaded)}): "
                               "call load_adapter() first")
        return self._loaded[name]

    def attach(self, name: str, scale: float) -> None:
        """Use ``name`` at ``scale`` for every request that names no adapters."""
        self.resolve({name: scale})
        self._attached[name] = float(scale)

    def detach(self, name: str | None) -> None:
        """Stop using ``name`` by default (every adapter when None); it stays loaded."""
        if name is None:
            self._attached.clear()
        else:
            self._attached.pop(name, None)

    def resolve(self, adapters: Mapping[str, float] | None) -> list[tuple[core.LoraAdapter, float]]:
        """What one request runs with: ``adapters`` (``{}`` for none) or, when None, the attached
        ones; a scale of 0 leaves an adapter out."""
        chosen = self._attached if adapters is None else adapters
        if not isinstance(chosen, Mapping):
            raise InputError(f"adapters must be a mapping of adapter name to scale, got {type(chosen).__name__}")
        resolved = []
        for name, scale in chosen.items():
            adapter = self.get(name)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise InputError(f"adapter scale must be a finite number, got {scale!r} for {name!r}")
            if scale != 0:
                resolved.append((adapter, float(scale)))
        return resolved
