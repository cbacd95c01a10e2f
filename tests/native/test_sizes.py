"""Sizes across llama.cpp's C API: strings longer than a first guess come back whole, and a length
over its int32 limit is refused with the limit named."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from engine._native import core
from engine.hardware import use_extra_buffer_types


@pytest.fixture(scope="module")
def model(generator_model_path) -> core.Model:
    # the engine's policy for llama.cpp's extra CPU buffers: AMX's multi-token matmul crashes (issue 20824)
    return core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())


def test_a_metadata_value_longer_than_the_first_buffer_comes_back_whole(model):
    template = model.meta("tokenizer.chat_template")
    assert len(template) > 256  # the first read's buffer: this value needs the second, grown one
    assert template == model.info.chat_template
    assert model.meta("no.such.key") == ""


def test_a_long_chat_renders_whole(model):
    long = "word " * 4000
    rendered = model.apply_chat_template([("user", long)], add_assistant=True)
    assert rendered.startswith("<|im_start|>user\n" + long)
    assert rendered.endswith("<|im_start|>assistant\n")


def test_text_over_llamas_2_gib_limit_is_refused_not_wrapped(generator_model_path):
    """A length llama.cpp cannot take (int32) is an InputError saying the limit, not a wrapped length.

    bytes(n) is zero pages the kernel has not handed out yet, and tokenize() takes it as a
    view, so this costs no memory. In a child process with its address space capped: were
    the size wrapped or a buffer sized from it, the child fails with MemoryError instead of
    taking gigabytes from the machine.
    """
    script = textwrap.dedent(f"""
        import resource
        from engine._native import core
        from engine.errors import InputError
        model = core.Model({str(generator_model_path)!r}, use_extra_bufts=False)
        text = bytes(2**31)  # one byte over INT32_MAX
        vm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + 2**30, resource.RLIM_INFINITY))
        try:
            model.tokenize(text)
        except InputError as exc:
            print("InputError:", exc)
        print("small:", model.tokenize(b"hello") == model.tokenize("hello"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "InputError: the text to tokenize is 2147483648 bytes, over llama.cpp's limit of 2147483647 bytes" \
        in done.stdout
    assert "small: True" in done.stdout
