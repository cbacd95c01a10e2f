"""The Python surface of engine._core: prompts as token ids, log-probabilities against
a softmax over llama.cpp's own logits, LoRA adapter metadata, one backend init, typed
errors only, and the .pyi stub checked against the compiled module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lora_files import write_lora

from engine._native import core
from engine.errors import ContextOverflowError, EngineError, InputError
from engine.hardware import use_extra_buffer_types

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(generator_model_path) -> core.Model:
    # the engine's policy for llama.cpp's extra CPU buffers: AMX's multi-token matmul crashes (issue 20824)
    return core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())


@pytest.fixture(scope="module")
def session(model) -> core.Session:
    return core.Session(model, n_ctx=256)


def greedy() -> core.SamplingOptions:
    return core.SamplingOptions()


def test_a_prompt_of_token_ids_is_used_as_is(model, session):
    text = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    ids = model.tokenize(text, parse_special=True)
    session.reset()
    from_text = session.generate(text, max_tokens=8, sampling=greedy(), reuse_prefix=False)
    from_ids = session.generate(ids, max_tokens=8, sampling=greedy(), reuse_prefix=False)
    assert from_ids.tokens == from_text.tokens and from_ids.text == from_text.text
    assert from_ids.timings.tokenize_ms == 0 < from_text.timings.tokenize_ms
    assert from_ids.timings.prompt_tokens == len(ids)


@pytest.mark.parametrize("ids", [[], [1, -1], [1, 10**6]], ids=["empty", "negative", "beyond-vocab"])
def test_token_ids_outside_the_vocabulary_are_an_input_error(session, ids):
    with pytest.raises(InputError):
        session.generate(ids, max_tokens=2, sampling=greedy())
    assert session.generate("Hi", max_tokens=2, sampling=greedy()).tokens


def test_log_probs_agree_with_a_softmax_over_llama_cpp_logits(generator_model_path):
    """llama-cpp-python (its own context, logits of every position) gives the reference.

    Flash attention is off on both sides: on the CPU it moves these log-probabilities
    by up to 0.2, far more than batch composition does.
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json
        import numpy as np
        import llama_cpp.llama_cpp as raw
        from llama_cpp import Llama
        from engine._native import core
        from engine.hardware import use_extra_buffer_types

        # Both sides use the CPU buffers the engine's policy picks (off where AMX crashes,
        # llama.cpp issue 20824); Llama() has no argument for it, so its default params are wrapped.
        extra = use_extra_buffer_types()
        defaults = raw.llama_model_default_params

        def params():
            chosen = defaults()
            chosen.use_extra_bufts = extra
            return chosen
        raw.llama_model_default_params = params

        path = {str(generator_model_path)!r}
        model = core.Model(path, use_extra_bufts=extra)
        tokens = model.tokenize("The capital of France is Paris, and the capital of Italy is Rome.")
        split = 6
        session = core.Session(model, n_ctx=256, flash_attn=0)
        ours = session.log_probs(tokens[:split], tokens[split:])

        llm = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=1, flash_attn=False)
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
        log_softmax = logits - logits.max(axis=1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(axis=1, keepdims=True))
        reference = [log_softmax[i - 1, tokens[i]] for i in range(split, len(tokens))]
        print(json.dumps({{"ours": ours, "reference": reference}}))
    """)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.splitlines()[-1])
    assert len(result["ours"]) == len(result["reference"]) > 5
    assert result["ours"] == pytest.approx(result["reference"], abs=1e-3)


def test_log_probs_leave_the_cache_holding_what_they_evaluated(model, session):
    context = model.tokenize("Once upon a time")
    continuation = model.tokenize(" there was a dragon", add_special=False)
    session.log_probs(context, continuation)
    assert session.cached_tokens == context + continuation[:-1]
    # a generate on the same prefix reuses it, and matches a cold run
    warm = session.generate(context, max_tokens=6, sampling=greedy())
    assert warm.timings.reused_tokens == len(context) - 1
    session.reset()
    assert session.generate(context, max_tokens=6, sampling=greedy()).tokens == warm.tokens


def test_log_probs_refuse_what_they_cannot_score(model, session):
    with pytest.raises(InputError, match="context is empty"):
        session.log_probs([], [1])
    with pytest.raises(InputError, match="continuation is empty"):
        session.log_probs([1], [])
    with pytest.raises(InputError, match="outside the vocabulary"):
        session.log_probs([1], [model.info.n_vocab])
    with pytest.raises(ContextOverflowError):
        session.log_probs([1] * 200, [2] * 100)


def test_lora_adapter_metadata_lists_every_key(model, tmp_path):
    path = write_lora(tmp_path / "tagged.gguf", metadata={"bakeoff.system_prompt": "Answer in French. ☺"})
    adapter = core.LoraAdapter(model, str(path))
    metadata = adapter.metadata
    assert metadata["bakeoff.system_prompt"] == "Answer in French. ☺"
    assert metadata["general.type"] == "adapter" and float(metadata["adapter.lora.alpha"]) == adapter.alpha == 8.0
    assert adapter.meta("bakeoff.system_prompt") == metadata["bakeoff.system_prompt"]


def test_backend_init_is_called_from_one_place():
    sources = {p.name: p.read_text() for p in (ROOT / "csrc").glob("*.cpp")}
    callers = [name for name, text in sources.items() if "llama_backend_init()" in text]
    assert callers == ["model.cpp"], callers
    assert core.backend_devices()  # goes through the one init


def test_core_failures_are_engine_errors_not_runtime_errors(model, session, tmp_path):
    failures = [
        lambda: core.Model(str(tmp_path / "missing.gguf")),
        lambda: core.LoraAdapter(model, str(tmp_path / "missing.gguf")),
        lambda: core.Session(model, kv_type="q3"),
        # llama.cpp aborts the process on a flash-attention value outside its enum
        lambda: core.Session(model, n_ctx=256, flash_attn=7),
        lambda: session.generate("", max_tokens=2, sampling=greedy()),
        lambda: session.generate("Hi", max_tokens=0, sampling=greedy()),
        lambda: model.detokenize([-5]),
        lambda: model.apply_chat_template([("user", "hi")], template="{% not a template"),
    ]
    for fail in failures:
        with pytest.raises(EngineError):
            fail()


def test_the_stub_matches_the_compiled_module():
    pytest.importorskip("mypy")
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "engine._core", "--allowlist",
         str(ROOT / ".ci" / "stubtest-allowlist.txt")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

