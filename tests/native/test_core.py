"""Build facts of engine._core: the libllama it runs on, the version check, hardware()."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest

from engine import _native
from engine._native import core
from engine.errors import BuildMismatchError, GeneratorBusyError
from engine.hardware import hardware, use_extra_buffer_types


def test_core_is_built_against_the_installed_llama_cpp_python():
    from importlib import metadata

    assert core.LLAMA_CPP_PYTHON_VERSION == metadata.version("llama-cpp-python")


def test_one_libllama_in_the_process_the_one_llama_cpp_python_ships():
    lib_dir = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    maps = Path("/proc/self/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libllama.so" in line}
    assert loaded, "libllama is not mapped"
    assert all(Path(p).resolve().parent == lib_dir.resolve() for p in loaded), loaded


def test_version_mismatch_says_how_to_rebuild():
    with pytest.raises(BuildMismatchError, match="pip install --no-build-isolation -e ."):
        _native.check_build("0.3.36", "0.3.99")
    with pytest.raises(BuildMismatchError, match="not installed"):
        _native.check_build("0.3.36", None)
    assert issubclass(BuildMismatchError, ImportError)
    _native.check_build("0.3.36", "0.3.36")


def test_hardware_reports_llama_devices_and_onnxruntime_providers():
    hw = hardware()
    assert any(d.type == "cpu" for d in hw.llama_devices)
    assert "CPU" in hw.llama_system_info
    assert "CPUExecutionProvider" in hw.onnxruntime_providers
    assert hw.llama_cpp_python_version == core.LLAMA_CPP_PYTHON_VERSION
    assert hw.gpu == (hw.llama_gpu_offload and any(d.type == "gpu" for d in hw.llama_devices))


def test_sanitize_utf8_replaces_only_invalid_bytes():
    assert core.sanitize_utf8("héllo 🙂".encode()) == "héllo 🙂"
    assert core.sanitize_utf8(b"ab\xf0\x9f") == "ab\ufffd"  # one U+FFFD per cut character, as Python does
    assert core.sanitize_utf8(b"\xed\xa0\x80") == "\ufffd" * 3  # a UTF-16 surrogate is not UTF-8


def test_second_concurrent_call_on_one_native_session_is_refused(generator_model_path):
    model = core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())  # AMX: issue 20824
    session = core.Session(model, n_ctx=256, n_threads=1, n_threads_batch=1)
    sampling = core.SamplingOptions()
    sampling.ignore_eos = True
    started, errors = threading.Event(), []

    def long_run():
        try:
            session.generate("Count:", max_tokens=200, sampling=sampling, on_piece=lambda _: started.set())
        except Exception as exc:  # the cancel below
            errors.append(exc)

    worker = threading.Thread(target=long_run)
    worker.start()
    started.wait(30)
    with pytest.raises(GeneratorBusyError, match="already generating"):
        session.generate("Hi", max_tokens=2, sampling=sampling)
    session.cancel()
    worker.join()
    assert session.generate("Hi", max_tokens=2, sampling=sampling).tokens
