"""What this machine can run on: llama.cpp's devices and onnxruntime's providers.

Also the one policy for llama.cpp's extra CPU buffer types (weight repacking, AMX):
llama.cpp's AMX matrix multiply crashes (SIGSEGV) on every batch of more than one
token (upstream llama.cpp issue 20824, open for the 0.3.36 build we link), so the
default ``"auto"`` turns extra buffer types off when the CPU backend was built with
AMX and keeps them on everywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine._native import core
from engine.errors import InputError
from engine.generation_types import EXTRA_BUFFERS

_AMX = re.compile(r"\bAMX_INT8\s*=\s*1\b")


@dataclass(frozen=True)
class Device:
    """One ggml device llama.cpp can use (``type`` is "cpu", "gpu", "accel" or "other")."""

    name: str
    description: str
    type: str
    memory_free_bytes: int
    memory_total_bytes: int


@dataclass(frozen=True)
class Hardware:
    """The compute llama.cpp and onnxruntime can use in this process."""

    llama_devices: tuple[Device, ...]
    llama_system_info: str
    llama_gpu_offload: bool
    llama_mmap: bool
    llama_cpp_python_version: str
    onnxruntime_providers: tuple[str, ...]  # empty when onnxruntime is not importable
    llama_cpu_amx: bool  # the CPU backend was built with AMX (its system line says AMX_INT8 = 1)
    extra_buffer_types_auto: bool  # what extra_buffers="auto" chooses on this machine

    @property
    def gpu(self) -> bool:
        """True when llama.cpp can offload layers to a GPU device it sees."""
        return self.llama_gpu_offload and any(d.type == "gpu" for d in self.llama_devices)


def _onnxruntime_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def cpu_backend_has_amx(system_info: str | None = None) -> bool:
    """True when llama.cpp's CPU backend uses AMX (``AMX_INT8 = 1`` in its system line).

    Args:
        system_info: a llama.cpp system line; None reads the linked llama.cpp's own.
    """
    return bool(_AMX.search(core.system_info() if system_info is None else system_info))


def use_extra_buffer_types(setting: str = "auto", system_info: str | None = None) -> bool:
    """Resolve an ``extra_buffers`` setting ("auto", "on" or "off") to llama.cpp's ``use_extra_bufts``.

    "auto" is off when the CPU backend has AMX (its multi-token matmul crashes there,
    llama.cpp issue 20824) and on otherwise, where repacked weights are as fast or faster.

    Args:
        setting: "auto", "on" or "off".
        system_info: a llama.cpp system line to decide "auto" by; None reads this machine's.

    Raises:
        InputError: ``setting`` is none of the three.
    """
    if setting not in EXTRA_BUFFERS:
        raise InputError(f"extra_buffers must be one of {', '.join(EXTRA_BUFFERS)}, got {setting!r}")
    if setting == "auto":
        return not cpu_backend_has_amx(system_info)
    return setting == "on"


def hardware() -> Hardware:
    """Report the devices, CPU features and providers llama.cpp and onnxruntime can use."""
    devices = tuple(
        Device(d.name, d.description, d.type, int(d.memory_free_bytes), int(d.memory_total_bytes))
        for d in core.backend_devices()
    )
    system_info = core.system_info()
    return Hardware(
        llama_devices=devices,
        llama_system_info=system_info,
        llama_gpu_offload=core.supports_gpu_offload(),
        llama_mmap=core.supports_mmap(),
        llama_cpp_python_version=core.LLAMA_CPP_PYTHON_VERSION,
        onnxruntime_providers=_onnxruntime_providers(),
        llama_cpu_amx=cpu_backend_has_amx(system_info),
        extra_buffer_types_auto=use_extra_buffer_types("auto", system_info),
    )


__all__ = ["Device", "Hardware", "cpu_backend_has_amx", "hardware",
           "use_extra_buffer_types"]
