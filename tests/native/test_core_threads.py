"""engine._core under threads and signals, each scenario in a child process so that a
crash is a failed test: files loaded concurrently keep their own llama.cpp error lines
(and llama.cpp's logger is never left pointing at a dead capture), the KV-cache
snapshot is safe during generation, a request's cancel token, and Ctrl-C."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from lora_files import N_EMBD, write_alien, write_lora

from engine.hardware import use_extra_buffer_types


def run_child(script: str, timeout: float = 240) -> str:
    """Run ``script`` in a fresh interpreter; its stdout, or a failed test naming how it died."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"child exited {done.returncode} (negative = signal): {done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def files(generator_model_path, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("files")
    truncated = folder / "half.gguf"
    data = generator_model_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {
        "model": str(generator_model_path),
        "truncated": str(truncated),
        "alien": str(write_alien(folder / "alien.gguf")),
        "lora": str(write_lora(folder / "fits.gguf", std=0.2)),
        "bad_lora": str(write_lora(folder / "misfit.gguf", n_in=N_EMBD * 2, std=0.2)),
    }


def test_concurrent_loads_keep_their_own_llama_errors_and_a_live_logger(files):
    libllama = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib" / "libllama.so"
    out = run_child(f"""
        import ctypes, threading
        from engine._native import core
        from engine.errors import AdapterError, ModelError

        files = {files!r}
        lib = ctypes.CDLL({str(libllama)!r})
        Callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        lib.llama_log_set.argtypes = [Callback, ctypes.c_void_p]
        lib.llama_log_get.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p)]

        def installed():
            cb, data = ctypes.c_void_p(), ctypes.c_void_p()
            lib.llama_log_get(ctypes.byref(cb), ctypes.byref(data))
            return cb.value, data.value

        model = core.Model(files["model"])
        failures = []

        def expect(error, call, own, foreign):
            try:
                call()
            except error as exc:
                message = str(exc)
                if own not in message or any(f in message for f in foreign):
                    failures.append(message)
            else:
                failures.append("no error")

        jobs = [
            lambda: core.Model(files["model"]),
            lambda: core.Session(model, n_ctx=64),
            lambda: core.LoraAdapter(model, files["lora"]),
            lambda: expect(ModelError, lambda: core.Model(files["truncated"]), "not within the file bounds",
                           ["unknown model architecture", "misfit"]),
            lambda: expect(ModelError, lambda: core.Model(files["alien"]), "unknown model architecture: 'notamodel'",
                           ["file bounds", "misfit"]),
            lambda: expect(AdapterError, lambda: core.LoraAdapter(model, files["bad_lora"]), "misfit.gguf",
                           ["file bounds", "unknown model architecture"]),
        ]

        def rounds(n):
            for _ in range(n):
                barrier = threading.Barrier(len(jobs))
                def run(job):
                    barrier.wait()
                    job()
                threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
                for t in threads: t.start()
                for t in threads: t.join()

        quiet = installed()
        rounds(8)
        print("quiet kept:", installed() == quiet)

        # Another library (llama_cpp does this) installs its own logger after our import.
        heard = []
        chatty = Callback(lambda level, text, data: heard.append(text))
        lib.llama_log_set(chatty, None)
        chatty_address = ctypes.cast(chatty, ctypes.c_void_p).value
        rounds(8)
        print("chatty kept:", installed()[0] == chatty_address)
        print("chatty heard captured lines:", any(b"unknown model architecture" in line for line in heard))
        print("failures:", len(failures))
        for f in failures[:5]: print(f)
    """)
    assert "quiet kept: True" in out, out
    assert "chatty kept: True" in out, out
    assert "chatty heard captured lines: False" in out, out
    assert "failures: 0" in out, out


def test_a_broken_file_error_quotes_llama_cpp(files):
    from engine._native import core
    from engine.errors import ModelError

    with pytest.raises(ModelError, match=r"llama_model_load: error loading model: tensor '.*' data is not within"):
        core.Model(files["truncated"])


def test_cached_tokens_is_a_consistent_snapshot_while_generating(files):
    out = run_child(f"""
        import threading
        from engine._native import core
        from engine.hardware import use_extra_buffer_types

        # the engine's own policy: AMX's multi-token matmul crashes in this llama.cpp (issue 20824)
        model = core.Model({files["model"]!r}, use_extra_bufts=use_extra_buffer_types())
        session = core.Session(model, n_ctx=512)
        sampling = core.SamplingOptions()
        sampling.ignore_eos = True
        text = "Count to a hundred:"
        prompt = model.tokenize(text, parse_special=True)
        done = threading.Event()

        def run():
            session.generate(text, max_tokens=300, sampling=sampling)
            done.set()

        worker = threading.Thread(target=run)
        worker.start()
        bad, last, reads = 0, 0, 0
        while not done.is_set():
            snapshot = session.cached_tokens
            reads += 1
            if snapshot and (snapshot[: len(prompt)] != prompt or len(snapshot) < last):
                bad += 1
            last = len(snapshot)
        worker.join()
        print("reads", reads, "bad", bad, "final", len(session.cached_tokens))
    """)
    reads, bad, final = (int(w) for w in out.split()[1::2])
    assert reads > 10 and bad == 0 and final >= 300, out


def test_a_cancel_token_cancels_its_request_before_it_starts_and_no_other(generator_model_path):
    from engine._native import core
    from engine.errors import CancelledError

    model = core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())  # AMX: issue 20824
    session = core.Session(model, n_ctx=128)
    sampling = core.SamplingOptions()
    early = core.CancelToken()
    early.cancel()
    with pytest.raises(CancelledError):
        session.generate("Hi", max_tokens=4, sampling=sampling, cancel=early)
    assert early.cancelled
    assert session.generate("Hi", max_tokens=4, sampling=sampling, cancel=core.CancelToken()).tokens


def test_ctrl_c_interrupts_a_long_generation_and_the_generator_stays_usable(generator_model_path):
    script = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
        from engine.generation.generator import Generator, SamplingConfig

        gen = Generator({str(generator_model_path)!r}, n_ctx=4096, n_threads=1)
        print("generating", flush=True)
        try:
            out = gen.generate("Count:", max_tokens=100000, sampling=SamplingConfig(ignore_eos=True))
            print("finished", out.stop_reason, flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("again", len(gen.generate("Hello", max_tokens=3).tokens), flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "generating"
        time.sleep(1.0)  # well into decoding
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        line = child.stdout.readline().strip()
        elapsed = time.monotonic() - sent
        rest, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert line == "interrupted", (line, err[-2000:])
    assert elapsed < 2.0
    assert rest.split() == ["again", "3"] and child.returncode == 0, err[-2000:]
