"""engine.Generator's requests: which requests a cancel reaches, streams that are
dropped, prompts given as token ids, log-probabilities, adapter metadata, and typed
errors for every unusable argument."""

from __future__ import annotations

import threading
import time

import pytest
from lora_files import write_lora

from engine.errors import AdapterError, CancelledError, ContextOverflowError, InputError
from engine.generation.generator import Generator, SamplingConfig
from engine.generation.stream import TextStream

LONG = SamplingConfig(ignore_eos=True)
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gen(generator_model_path, tmp_path_factory) -> Generator:
    generator = Generator(generator_model_path, n_ctx=512, n_threads=1, flash_attn=False)
    folder = tmp_path_factory.mktemp("adapters")
    generator.load_adapter(write_lora(folder / "tagged.gguf", metadata={"bakeoff.system_prompt": "Be brief."}))
    return generator


@pytest.fixture(autouse=True)
def healthy_afterwards(gen):
    """Every test leaves the Generator usable, with no cancel left over."""
    yield
    assert gen.generate("Hello", max_tokens=2).tokens


def started_stream(gen: Generator, max_tokens: int = 2000):
    stream = gen.stream("Tell me a long story.", max_tokens=max_tokens, sampling=LONG)
    next(stream)
    return stream


# Cancel ------------------------------------------------------------------------

def test_cancel_reaches_the_running_request_and_those_waiting_their_turn(gen):
    running = started_stream(gen)
    outcome = []

    def waiting():
        try:
            gen.generate("Hi", max_tokens=4)
            outcome.append("ran")
        except CancelledError:
            outcome.append("cancelled")

    waiter = threading.Thread(target=waiting)
    waiter.start()
    time.sleep(0.3)  # the waiter has submitted and waits for the running stream
    gen.cancel()
    with pytest.raises(CancelledError):
        list(running)
    waiter.join(10)
    assert outcome == ["cancelled"]


def test_a_stream_cancelled_before_its_first_piece_never_runs(gen):
    stream = gen.stream("Tell me a long story.", max_tokens=2000, sampling=LONG)
    gen.cancel()  # submitted, not started: nothing runs in the native code yet
    start = time.perf_counter()
    with pytest.raises(CancelledError):
        next(stream)
    assert time.perf_counter() - start < 1.0


def test_a_stream_is_cancelled_however_soon_after_it_starts(gen):
    for delay in (0.0, 0.001, 0.005, 0.02):
        stream = gen.stream("Tell me a long story.", max_tokens=2000, sampling=LONG)
        pieces, outcome = [], []

        def consume(s=stream, pieces=pieces, outcome=outcome):
            try:
                pieces.extend(s)
                outcome.append("finished")
            except CancelledError:
                outcome.append("cancelled")

        consumer = threading.Thread(target=consume)
        consumer.start()
        time.sleep(delay)  # before, while or after the worker enters the native decode loop
        gen.cancel()
        consumer.join(5)
        assert outcome == ["cancelled"], f"the stream ran on after cancel() (delay {delay} s)"
        assert len(pieces) < 2000


def test_cancel_with_nothing_submitted_does_not_touch_later_requests(gen):
    expected = gen.generate(CAPITAL, max_tokens=8)
    gen.cancel()
    assert gen.generate(CAPITAL, max_tokens=8).tokens == expected.tokens
    stream = gen.stream(CAPITAL, max_tokens=8)
    assert "".join(stream) == expected.text


def test_closing_one_stream_cancels_only_that_one(gen):
    first = started_stream(gen)
    second = gen.stream(CAPITAL, max_tokens=8)  # waits behind the first
    first.close()
    assert "Paris" in "".join(second)


# Streams that are dropped ---------------------------------------------------------

def test_a_dropped_stream_is_cancelled_at_once(gen):
    stream = started_stream(gen)
    del stream  # no close(): the last reference goes
    start = time.perf_counter()
    out = gen.generate("Hi", max_tokens=2)
    assert time.perf_counter() - start < 1.0
    assert len(out.tokens) == 2


def test_a_stream_runs_on_callables_alone():
    cancelled = []

    def run(on_piece):
        for piece in ("a", "b", "c"):
            on_piece(piece)
        return "done"

    stream = TextStream(run, lambda: cancelled.append(True))
    assert list(stream) == ["a", "b", "c"] and stream.generation == "done"
    assert cancelled == []
    TextStream(run, lambda: cancelled.append(True)).close()
    assert cancelled == [True]


# Prompts as token ids ------------------------------------------------------------------

def test_a_prompt_of_token_ids_equals_its_text(gen):
    text = gen.format_chat(CAPITAL)
    ids = gen.tokenize(text, parse_special=True)
    gen.reset()
    from_text = gen.generate(text, max_tokens=12, reuse_prefix=False)
    for prompt in (ids, tuple(ids)):
        from_ids = gen.generate(prompt, max_tokens=12, reuse_prefix=False)
        assert from_ids.tokens == from_text.tokens and "Paris" in from_ids.text
        assert from_ids.timings.tokenize_ms == 0
    assert "".join(gen.stream(ids, max_tokens=12)) == from_text.text


@pytest.mark.parametrize("prompt", [[1, -1], [1, 10**7], [1, 2.0], [1, True], [1, "2"]],
                         ids=["negative", "beyond-vocab", "float", "bool", "str"])
def test_token_ids_must_be_ints_of_the_vocabulary(gen, prompt):
    with pytest.raises(InputError, match="token id"):
        gen.generate(prompt, max_tokens=2)
    with pytest.raises(InputError, match="token id"):
        gen.detokenize(prompt)


# Log-probabilities -------------------------------------------------------------------

def test_log_prob_of_the_greedy_token_is_the_highest(gen):
    context = gen.tokenize(gen.format_chat(CAPITAL), parse_special=True)
    best = gen.generate(context, max_tokens=1).tokens[0]
    best_lp = gen.log_prob(context, [best])
    assert best_lp < 0
    others = [t for t in range(0, gen.info.n_vocab, 997) if t != best]
    assert all(gen.log_prob(context, [t]) < best_lp for t in others)


def test_log_prob_of_two_tokens_is_the_sum_of_two_steps(gen):
    context = gen.tokenize("The capital of France is")
    a, b = gen.tokenize(" Paris.", add_special=False)[:2]
    gen.reset()  # the same batches each time: no last-bit differences from prefix reuse
    both = gen.log_prob(context, [a, b])
    gen.reset()
    first = gen.log_prob(context, [a])
    gen.reset()
    second = gen.log_prob(context + [a], [b])
    assert both == pytest.approx(first + second, abs=1e-4)
    assert gen.log_prob(context, [a, b]) == pytest.approx(both, abs=0.05)  # with prefix reuse


def test_log_prob_uses_the_adapters_and_leaves_the_cache_consistent(gen):
    context = gen.tokenize(gen.format_chat(CAPITAL), parse_special=True)
    answer = gen.tokenize("The capital of France is Paris.", add_special=False)
    base = gen.log_prob(context, answer, adapters={})
    adapted = gen.log_prob(context, answer, adapters={"tagged": 1.0})
    assert adapted != pytest.approx(base, abs=1e-3)
    # the next generate reuses what log_prob evaluated and answers as a cold run does
    warm = gen.generate(context, max_tokens=8, adapters={"tagged": 1.0})
    assert warm.timings.reused_tokens == len(context) - 1
    gen.reset()
    assert gen.generate(context, max_tokens=8, adapters={"tagged": 1.0}).tokens == warm.tokens


def test_log_prob_refuses_unusable_arguments(gen):
    with pytest.raises(InputError, match="at least one"):
        gen.log_prob([], [1])
    with pytest.raises(InputError, match="at least one"):
        gen.log_prob([1], [])
    with pytest.raises(InputError, match="token id"):
        gen.log_prob("text", [1])
    with pytest.raises(ContextOverflowError):
        gen.log_prob([1] * 400, [2] * 200)
    with pytest.raises(AdapterError):
        gen.log_prob([1], [2], adapters={"nope": 1.0})


# Adapter metadata ----------------------------------------------------------------

def test_adapter_metadata_reads_the_gguf_keys(gen):
    metadata = gen.adapter_metadata("tagged")
    assert metadata["bakeoff.system_prompt"] == "Be brief."
    assert metadata["adapter.type"] == "lora"
    with pytest.raises(AdapterError, match="load_adapter"):
        gen.adapter_metadata("nope")


# Typed errors ------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [{"stop": ["bad \udc80"]}, {"stop": [""]}, {"stop": None}, {"adapters": ["tagged"]},
     {"adapters": {"tagged": "1"}}, {"sampling": {"temperature": 0.5}}, {"truncate": "right"},
     {"grammar": 3}, {"top_k": 10**12}],
    ids=["stop-surrogate", "stop-empty", "stop-none", "adapters-list", "adapter-scale-str", "sampling-dict",
         "truncate", "grammar-int", "top_k-beyond-int32"],
)
def test_unusable_arguments_are_input_errors(gen, kwargs):
    with pytest.raises(InputError):
        gen.generate("Hi", max_tokens=2, **kwargs)
    with pytest.raises(InputError):
        gen.stream("Hi", max_tokens=2, **kwargs)


def test_integers_beyond_the_native_range_are_input_errors(gen, generator_model_path):
    with pytest.raises(InputError, match="max_tokens"):
        gen.generate("Hi", max_tokens=2**31)
    with pytest.raises(InputError, match="n_ctx"):
        Generator(generator_model_path, n_ctx=2**40)
    with pytest.raises(InputError, match="n_threads"):
        Generator(generator_model_path, n_threads=2**31)


def test_an_unusable_adapter_name_is_an_input_error(gen, tmp_path):
    with pytest.raises(InputError, match="name"):
        gen.load_adapter(tmp_path / "any.gguf", name="")
