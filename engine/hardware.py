"""What this machine can run on: llama.cpp's devices and onnxruntime's providers."""

from __future__ import annotations

from dataclasses import dataclass

from engine._native import core


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


def hardware() -> Hardware:
    """Report the devices, CPU features and providers llama.cpp and onnxruntime can use."""
    devices = tuple(
        Device(d.name, d.description, d.type, int(d.memory_free_bytes), int(d.memory_total_bytes))
        for d in core.backend_devices()
    )
    return Hardware(
        llama_devices=devices,
        llama_system_info=core.system_info(),
        llama_gpu_offload=core.supports_gpu_offload(),
        llama_mmap=core.supports_mmap(),
        llama_cpp_python_version=core.LLAMA_CPP_PYTHON_VERSION,
        onnxruntime_providers=_onnxruntime_providers(),
    )


__all__ = ["Device", "Hardware", "hardware"]
