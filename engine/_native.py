"""The one import of ``engine._core``, checked against the installed llama-cpp-python.

``engine._core`` is compiled against the ``llama.h`` of one llama-cpp-python release
and loads that release's ``libllama`` at run time. If another release is installed
since, structs and symbols may differ, so we refuse to run rather than crash.
"""

from __future__ import annotations

from importlib import metadata

from engine.errors import BuildMismatchError

_REBUILD = "rebuild the extension with `pip install --no-build-isolation -e .`"


def check_build(built_against: str, installed: str | None) -> None:
    """Raise :class:`BuildMismatchError` unless ``built_against == installed``.

    Args:
        built_against: the llama-cpp-python version ``_core`` was compiled against.
        installed: the version installed now, or ``None`` when it is not installed.
    """
    if installed is None:
        raise BuildMismatchError(
            f"llama-cpp-python is not installed, but engine._core was built against {built_against} "
            f"and needs its libllama: `pip install llama-cpp-python=={built_against}`, then {_REBUILD}"
        )
    if built_against != installed:
        raise BuildMismatchError(
            f"engine._core was built against llama-cpp-python {built_against} but {installed} is installed: "
            f"{_REBUILD} (or reinstall llama-cpp-python=={built_against})"
        )


def _installed_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


try:
    from engine import _core as core
except ImportError as exc:  # missing build, or libllama changed under us (undefined symbol)
    raise BuildMismatchError(f"engine._core cannot be imported ({exc}): {_REBUILD}") from exc

check_build(core.LLAMA_CPP_PYTHON_VERSION, _installed_version())

__all__ = ["check_build", "core"]
