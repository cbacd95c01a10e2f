"""engine.Generator on the real SmolLM2-135M-Instruct Q4_1: answers, determinism,
streaming, stop strings, prefix reuse, timings, threads, and every bad input."""

from __future__ import annotations

import threading
import time

import pytest

from engine.errors import CancelledError, ContextOverflowError, GenerationError, InputError, ModelError
from engine.generation.generator import Generation, Generator, SamplingConfig
from lora_files import write_alien
from engine.hardware import hardware

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = (
    "You are a concise assistant for a travel agency. Answer in one short sentence. "
    "Never invent facts; if you do not know, say so. Prefer metric units, and name cities in English. "
) * 3


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def gen(generator_model_path) -> Generator:
    return Generator(generator_model_path, n_ctx=512, n_threads=1, seed=7)


@pytest.fixture(autouse=True)
def healthy_afterwards(gen):
    """Every test, including the bad-input ones, leaves the Generator usable."""
    yield
    assert gen.generate("Hello", max_tokens=2).tokens


# Model ---------------------------------------------------------------------

def test_model_metadata(gen):
    info = gen.info
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert 100e6 < info.n_params < 200e6
    assert info.context_length == 8192
    assert "<|im_start|>" in info.chat_template
    assert gen.n_ctx == 512


def test_tokenize_detokenize_round_trip(gen):
    text = "The quick brown fox jumps over the lazy dog."
    tokens = gen.tokenize(text)
    assert 5 < len(tokens) < 20
    assert gen.detokenize(tokens).strip() == text


def test_chat_messages_use_the_models_template(gen):
    prompt = gen.format_chat(CAPITAL)
    assert prompt == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


# Generation ---------------------------------------------------------------

def test_answers_a_factual_question(gen):
    out = gen.generate(CAPITAL, max_tokens=24)
    assert isinstance(out, Generation)
    assert "Paris" in out.text
    assert out.stop_reason == "eos"


def test_greedy_is_deterministic(gen):
    a = gen.generate("The three primary colours are", max_tokens=16, reuse_prefix=False)
    b = gen.generate("The three primary colours are", max_tokens=16, reuse_prefix=False)
    assert a.tokens == b.tokens and a.text == b.text
    assert len(a.tokens) == 16 and a.stop_reason == "length"


def test_seeded_sampling_is_reproducible(gen):
    sampling = SamplingConfig(temperature=0.9, top_k=40, top_p=0.95, seed=123)
    a = gen.generate("Write a word:", max_tokens=12, sampling=sampling)
    b = gen.generate("Write a word:", max_tokens=12, sampling=sampling)
    assert a.tokens == b.tokens


def test_stream_equals_generate(gen):
    expected = gen.generate(CAPITAL, max_tokens=24)
    stream = gen.stream(CAPITAL, max_tokens=24)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == expected.text
    assert stream.generation.tokens == expected.tokens


def test_stop_string_ends_generation_and_is_not_in_the_text(gen):
    full = gen.generate(CAPITAL, max_tokens=24).text
    out = gen.generate(CAPITAL, max_tokens=24, stop=["Paris"])
    assert out.stop_reason == "stop"
    assert out.text == full[: full.index("Paris")]
    streamed = "".join(gen.stream(CAPITAL, max_tokens=24, stop=["Paris"]))
    assert streamed == out.text


def test_grammar_constrains_the_output(gen):
    out = gen.generate("Is Paris in France? Answer:", max_tokens=8, grammar='root ::= " yes" | " no"')
    assert out.text in (" yes", " no")


def test_multibyte_characters_split_across_tokens_stay_valid_utf8(gen):
    tokens = gen.tokenize("🙂", add_special=False)
    assert len(tokens) > 1, "the emoji should span several byte tokens"
    assert gen.detokenize(tokens[:1]) == "\ufffd"  # a cut character is replaced, never raised
    prompt = [{"role": "user", "content": "Repeat exactly: 🙂 🙂 日本語 🙂"}]
    stream = gen.stream(prompt, max_tokens=24)
    pieces = list(stream)
    text = "".join(pieces)
    assert all(isinstance(p, str) for p in pieces)
    # held-back bytes were joined with the next token's bytes, not replaced
    assert text == gen.detokenize(list(stream.generation.tokens))
    assert "\ufffd" not in text


# Prefix reuse and timings -------------------------------------------------

def test_prefix_reuse_evaluates_only_the_new_suffix_and_is_exact(gen):
    gen.reset()
    first = gen.generate(chat("Which city is the capital of Italy?"), max_tokens=12)
    assert first.timings.reused_tokens == 0
    second = gen.generate(chat("Which city is the capital of Spain?"), max_tokens=12)
    t = second.timings
    assert t.reused_tokens > 100
    assert t.prefill_tokens == t.prompt_tokens - t.reused_tokens < 20
    gen.reset()
    fresh = gen.generate(chat("Which city is the capital of Spain?"), max_tokens=12, reuse_prefix=False)
    assert fresh.timings.reused_tokens == 0
    assert fresh.tokens == second.tokens and fresh.text == second.text


def test_identical_prompt_reuses_all_but_the_last_token(gen):
    a = gen.generate(CAPITAL, max_tokens=4)
    b = gen.generate(CAPITAL, max_tokens=4)
    assert b.timings.reused_tokens == b.timings.prompt_tokens - 1
    assert b.tokens == a.tokens


def test_timings_are_reported_per_stage(gen):
    gen.reset()
    t = gen.generate(CAPITAL, max_tokens=6, sampling=SamplingConfig(ignore_eos=True)).timings
    assert t.tokenize_ms > 0 and t.prefill_ms > 0 and t.decode_ms > 0
    assert t.prefill_tokens == t.prompt_tokens and t.prefill_tokens_per_s > 0
    assert t.decode_tokens == 5 and t.decode_tokens_per_s > 0
    assert t.tokenize_ms + t.prefill_ms <= t.ttft_ms <= t.total_ms
    assert t.ttft_ms + t.decode_ms <= t.total_ms + 1e-6
    assert t.backend == "CPU" and t.n_gpu_layers_offloaded == 0 and "CPU" in t.devices


# Threads ------------------------------------------------------------------

def test_gil_is_released_during_generation(gen):
    done = threading.Event()
    ticks = 0

    def run():
        gen.generate("Count to twenty:", max_tokens=24, sampling=SamplingConfig(ignore_eos=True))
        done.set()

    worker = threading.Thread(target=run)
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0)
    worker.join()
    elapsed = time.perf_counter() - start
    assert ticks > 1000 * elapsed  # the main thread kept running Python the whole time


def test_cancel_from_another_thread(gen):
    expected = gen.generate(CAPITAL, max_tokens=8)
    errors = []

    def run():
        try:
            gen.generate("Tell me a long story.", max_tokens=400, sampling=SamplingConfig(ignore_eos=True))
        except CancelledError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)
    while worker.is_alive():
        gen.cancel()
        worker.join(0.05)
    assert len(errors) == 1
    assert gen.generate(CAPITAL, max_tokens=8).tokens == expected.tokens


def test_closing_a_stream_early_cancels_it(gen):
    stream = gen.stream("Tell me a long story.", max_tokens=400, sampling=SamplingConfig(ignore_eos=True))
    next(stream)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 2
    assert list(stream) == []


def test_concurrent_calls_are_serialised(gen):
    expected = gen.generate(CAPITAL, max_tokens=8).text
    results, errors = [], []

    def run():
        try:
            results.append(gen.generate(CAPITAL, max_tokens=8).text)
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == [] and results == [expected] * 3


# Bad input ----------------------------------------------------------------

def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="no model file"):
        Generator(tmp_path / "nope.gguf")


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        Generator(path)


@pytest.mark.parametrize("keep", [1000, 0.5], ids=["in-header", "in-tensor-data"])
def test_truncated_gguf(tmp_path, generator_model_path, keep):
    path = tmp_path / "truncated.gguf"
    size = generator_model_path.stat().st_size
    with open(generator_model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(keep if isinstance(keep, int) else int(size * keep)))
    with pytest.raises(ModelError, match="truncated|corrupted"):
        Generator(path, n_threads=1)


def test_gguf_of_unsupported_architecture(tmp_path):
    with pytest.raises(ModelError, match="architecture"):
        Generator(write_alien(tmp_path / "alien.gguf"), n_threads=1)


def test_prompt_longer_than_context(gen):
    long_prompt = "word " * 600
    with pytest.raises(ContextOverflowError, match="n_ctx|truncate"):
        gen.generate(long_prompt, max_tokens=4)
    out = gen.generate(long_prompt, max_tokens=4, truncate="left")
    assert out.timings.truncated_tokens > 0
    assert out.timings.prompt_tokens + 4 <= gen.n_ctx


@pytest.mark.parametrize("max_tokens", [0, -3, 1.5, True])
def test_max_tokens_must_be_positive(gen, max_tokens):
    with pytest.raises(InputError, match="max_tokens"):
        gen.generate("Hi", max_tokens=max_tokens)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"temperature": float("nan")}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1},
     {"repeat_penalty": 0}],
)
def test_invalid_sampling_values(gen, kwargs):
    with pytest.raises(InputError):
        gen.generate("Hi", max_tokens=2, **kwargs)


@pytest.mark.parametrize(
    "prompt", ["", [], [{"role": "user"}], "bad \udc80 surrogate", b"bytes"], ids=["empty", "no-messages",
                                                                                 "no-content", "surrogate", "bytes"]
)
def test_unusable_prompts(gen, prompt):
    with pytest.raises(InputError):
        gen.generate(prompt, max_tokens=2)


def test_invalid_grammar(gen):
    with pytest.raises(InputError, match="grammar"):
        gen.generate("Hi", max_tokens=2, grammar="root ::= (")


def test_invalid_settings(generator_model_path):
    with pytest.raises(InputError, match="kv_type"):
        Generator(generator_model_path, kv_type="q3")
    with pytest.raises(InputError, match="n_ctx"):
        Generator(generator_model_path, n_ctx=0)


def test_bf16_kv_with_splice_slots_is_refused_before_llama_cpp_can_abort(generator_model_path):
    """A bf16 chunk state moved to another position went to llama.cpp's K-shift, whose CPU RoPE
    aborts the process on bf16 (exit 134): the combination is refused when the generator is made."""
    with pytest.raises(InputError, match='kv_type="bf16" cannot be used with splice_slots'):
        Generator(generator_model_path, n_ctx=256, kv_type="bf16", splice_slots=1)
    Generator(generator_model_path, n_ctx=256, n_threads=1, kv_type="bf16").generate("Hi", max_tokens=1)


def test_errors_are_one_hierarchy():
    assert issubclass(ContextOverflowError, GenerationError) and issubclass(ContextOverflowError, InputError)
    assert issubclass(CancelledError, GenerationError)


# GPU ----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not hardware().gpu, reason="no GPU backend in the linked llama.cpp")
def test_layers_are_offloaded_to_the_gpu(generator_model_path):
    gen = Generator(generator_model_path, n_ctx=512, n_gpu_layers=-1)
    t = gen.generate(CAPITAL, max_tokens=8).timings
    assert t.n_gpu_layers_offloaded > 0 and t.backend != "CPU"


def test_fastest_thread_count_measures_each_candidate(generator_model_path):
    from engine.generation.threads import fastest_thread_count

    chosen, probe_ms = fastest_thread_count(generator_model_path, [1, 2], prompt_tokens=32, rounds=1)
    assert set(probe_ms) == {1, 2} and all(ms > 0 for ms in probe_ms.values())
    assert probe_ms[chosen] == min(probe_ms.values())
    with pytest.raises(InputError, match="candidates"):
        fastest_thread_count(generator_model_path, [0])
