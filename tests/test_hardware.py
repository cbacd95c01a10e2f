"""The thread-count policy; llama.cpp's extra CPU buffer types: the "auto" policy, and
multi-token prompts that must not crash.

llama.cpp's AMX matrix multiply segfaults on every batch of more than one token
(upstream issue 20824), so generation runs in a child process here: a crash is a
failed test with the child's exit signal, not a dead test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from engine.errors import InputError
from engine.generation.generator import Generator, GeneratorConfig
from engine.hardware import (
    cpu_backend_has_amx,
    default_threads,
    hardware,
    physical_cores,
    usable_cpus,
    use_extra_buffer_types,
)

# System lines as llama.cpp 0.3.36 prints them: an AMX Xeon (Sapphire Rapids) and an AVX-512 EPYC.
AMX_LINE = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
            "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
            "REPACK = 1 | ")
NO_AMX_LINE = AMX_LINE.replace("AMX_INT8 = 1 | ", "")

# The prompt of the bug report: it crashed on an AMX machine before extra buffers were turned off there.
CRASHING_PROMPT = "Write the numbers from 1 to 300, separated by commas: 1, 2, 3,"


def test_auto_turns_extra_buffers_off_when_the_cpu_backend_has_amx():
    assert cpu_backend_has_amx(AMX_LINE)
    assert use_extra_buffer_types("auto", AMX_LINE) is False


def test_auto_keeps_extra_buffers_on_without_amx():
    assert not cpu_backend_has_amx(NO_AMX_LINE)
    assert not cpu_backend_has_amx(NO_AMX_LINE + "AMX_INT8 = 0 | ")
    assert use_extra_buffer_types("auto", NO_AMX_LINE) is True


def test_on_and_off_are_obeyed_whatever_the_cpu():
    for line in (AMX_LINE, NO_AMX_LINE):
        assert use_extra_buffer_types("on", line) is True
        assert use_extra_buffer_types("off", line) is False


def test_an_unknown_setting_is_a_typed_error():
    with pytest.raises(InputError, match="extra_buffers must be one of auto, on, off"):
        use_extra_buffer_types("yes")
    with pytest.raises(InputError, match="extra_buffers"):
        GeneratorConfig(extra_buffers="fast").validate()


def test_hardware_reports_amx_and_what_auto_chooses():
    hw = hardware()
    assert hw.llama_cpu_amx == ("AMX_INT8 = 1" in hw.llama_system_info)
    assert hw.extra_buffer_types_auto == (not hw.llama_cpu_amx)


def test_thread_counts_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert usable_cpus() == 8
    assert default_threads() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert (usable_cpus(), default_threads(), physical_cores()) == (1, 1, 1)


def test_thread_counts_without_an_affinity_call_fall_back_to_the_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert (usable_cpus(), default_threads(), physical_cores()) == (6, 3, 3)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert (usable_cpus(), default_threads(), physical_cores()) == (1, 1, 1)


def test_physical_cores_count_hyper_thread_siblings_once():
    assert 1 <= physical_cores() <= usable_cpus()
    assert 1 <= default_threads() <= usable_cpus()


def test_the_thread_policy_does_not_load_llama_cpp():
    script = ("import sys, engine.hardware as h; h.default_threads(); h.physical_cores(); "
              "print('engine._core' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def _generate_in_child(model_path, extra_buffers: str) -> dict:
    script = textwrap.dedent(f"""
        import json
        from engine.generation.generator import Generator
        gen = Generator({str(model_path)!r}, n_ctx=256, n_threads=1, extra_buffers={extra_buffers!r})
        out = gen.generate({CRASHING_PROMPT!r}, max_tokens=32)
        print(json.dumps({{"text": out.text, "prompt_tokens": out.timings.prompt_tokens,
                           "extra_buffer_types": out.timings.extra_buffer_types}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"generation with extra_buffers={extra_buffers!r} died "
                                  f"(exit {done.returncode}; negative = signal): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("setting", ["auto", "off"])
def test_a_multi_token_prompt_generates_in_a_child_process(generator_model_path, setting):
    result = _generate_in_child(generator_model_path, setting)
    assert result["prompt_tokens"] > 1
    assert result["extra_buffer_types"] == use_extra_buffer_types(setting)
    assert "4" in result["text"]  # it goes on counting


@pytest.mark.skipif(cpu_backend_has_amx(), reason="'on' is the crash the AMX policy avoids (llama.cpp issue 20824)")
def test_extra_buffers_on_generates_where_there_is_no_amx(generator_model_path):
    result = _generate_in_child(generator_model_path, "on")
    assert result["extra_buffer_types"] is True
    assert "4" in result["text"]


def test_each_result_reports_the_choice(generator_model_path):
    gen = Generator(generator_model_path, n_ctx=256, n_threads=1, extra_buffers="off")
    assert gen.generate("Hello", max_tokens=2).timings.extra_buffer_types is False
