"""Lazy public names for a package: each is imported from its module on first use,
so importing the package does not pay for heavy dependencies it may never need."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any


def lazy_exports(package: str, lazy: Mapping[str, str], namespace: MutableMapping[str, Any],
                 public: Sequence[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's name, for the error message.
        lazy: public name -> the module that defines it.
        namespace: the package's ``globals()``; a name is cached there once resolved.
        public: what ``dir(package)`` lists (its ``__all__``).
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(public)

    return __getattr__, __dir__
