"""What this machine can run on: llama.cpp's devices, onnxruntime's providers, CPU threads.

The one thread-count policy: ``usable_cpus`` (the CPUs this process may run on),
``default_threads`` (llama.cpp: half of them) and ``physical_cores`` (onnxruntime:
one thread per core); see each for why.

Also the one policy for llama.cpp's extra CPU buffer types (weight repacking, AMX):
llama.cpp's AMX matrix multiply crashes (SIGSEGV) on every batch of more than one
token (upstream llama.cpp issue 20824, open for the 0.3.36 build we link), so the
default ``"auto"`` turns extra buffer types off when the CPU backend was built with
AMX and keeps them on everywhere else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError

#: Settings of llama.cpp's extra CPU buffer types; :func:`use_extra_buffer_types` resolves "auto".
EXTRA_BUFFERS = ("auto", "on", "off")

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


def usable_cpus() -> int:
    """How many CPUs this process may run on: its affinity mask (what ``taskset`` or a
    container's cpuset allows), not every CPU of the machine; ``os.cpu_count()`` where
    the platform has no affinity call."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Generation (llama.cpp) threads when the caller gives none: half the usable CPUs, at least 1.

    Half the CPUs is about the physical cores where each has two hyper-threads, and
    llama.cpp's decode is bound by memory bandwidth, which more threads do not add.
    Its worker threads spin while they wait, so a thread for every CPU competes with
    the rest of the process and anything else running: on the 2-CPU machines this
    project is measured on, one thread answered fastest. llama-cpp-python chooses the
    same. ``engine.generation.threads.fastest_thread_count`` measures instead of assuming.
    """
    return max(1, usable_cpus() // 2)


#: Threads per usable CPU a caller may ask for (generation or embedding); see :func:`max_threads`.
THREADS_PER_CPU_LIMIT = 4


def max_threads() -> int:
    """The most threads ``Generator`` and ``Embedder`` accept: 4 per usable CPU, at least 16.

    More cannot help (llama.cpp's workers spin at each barrier; ONNX Runtime's pool is
    compute-bound) and far more breaks things: 100,000 llama.cpp threads crash the
    process (SIGSEGV past ggml's own limit of 512), and 4,096 on 2 CPUs take minutes
    per token, as 100,000 ONNX Runtime threads take minutes to start.
    """
    return max(16, THREADS_PER_CPU_LIMIT * usable_cpus())


def physical_cores() -> int:
    """Embedding (onnxruntime) threads when the caller gives none: the physical cores
    this process may run on, counted from each usable CPU's hyper-thread siblings.

    onnxruntime's own default is also one thread per physical core: hyper-threads of
    one core share its FMA units, so a second thread there adds little to a matmul.
    Unlike llama.cpp's decode, a batch of BERT matmuls is bound by compute and scales
    with cores: on a 2-core machine without hyper-threads, 2 threads embedded a batch
    of 105 passages in 1.6 s against 3.1 s with 1 (``default_threads`` would give 1).
    """
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux: no topology to read, assume two hyper-threads per core
        return default_threads()
    cores = set()
    for cpu in cpus:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            siblings = str(cpu)
        cores.add(siblings.strip())
    return max(1, len(cores))


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
    if system_info is None:
        system_info = _core().system_info()
    return bool(_AMX.search(system_info))


def _core():
    """The native core, imported on first use: the thread policy above must not load
    libllama (nor fail a build check) in a process that only embeds."""
    from engine._native import core

    return core


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
    core = _core()
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


__all__ = ["Device", "Hardware", "cpu_backend_has_amx", "default_threads", "hardware", "max_threads",
           "physical_cores", "usable_cpus", "use_extra_buffer_types"]
