"""Unusable arguments are InputErrors that say what is accepted (issue 12, item 6), never a
TypeError from deep inside, and never a value silently replaced by another."""

from __future__ import annotations

import pytest

from engine.embedding.embedder import Embedder
from engine.errors import InputError
from engine.generation.generator import Generator

SURROGATE = "What is \udc80 this?"


@pytest.fixture(scope="module")
def gen(generator_model_path) -> Generator:
    return Generator(generator_model_path, n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def embedder(embedder_dir) -> Embedder:
    return Embedder(embedder_dir, variant="int8", threads=1)


@pytest.mark.parametrize(
    "prompt, kwargs",
    [(SURROGATE, {}), ([{"role": "user", "content": SURROGATE}], {}), ("Hi", {"stop": ["\udc80"]}),
     ("Hi", {"stop": None}), ("Hi", {"max_tokens": 2**40})],
    ids=["question-surrogate", "message-surrogate", "stop-surrogate", "stop-none", "max_tokens-2**40"],
)
def test_request_arguments_are_input_errors(gen, prompt, kwargs):
    with pytest.raises(InputError):
        gen.generate(prompt, **{"max_tokens": 2, **kwargs})


def test_an_unknown_chat_role_is_refused_naming_the_roles_the_template_knows(gen):
    with pytest.raises(InputError, match="'wizard'.*system, user, assistant"):
        gen.generate([{"role": "wizard", "content": "Hi"}], max_tokens=2)
    with pytest.raises(InputError, match="'wizard'"):
        gen.format_chat([("user", "Hi"), ("wizard", "Hi")])
    assert gen.chat_roles == ("system", "user", "assistant")  # SmolLM2's ChatML template names no tool role
    assert "<|im_start|>system" in gen.format_chat([("system", "Be brief."), ("user", "Hi")])


@pytest.mark.parametrize("n_ctx, becomes", [(16, 256), (255, 256), (300, 512), (1000, 1024)])
def test_a_context_llama_cpp_would_enlarge_is_refused_saying_what_it_takes(generator_model_path, n_ctx, becomes):
    with pytest.raises(InputError, match=f"n_ctx must be a multiple of 256 tokens, at least 256.*make it {becomes}"):
        Generator(generator_model_path, n_ctx=n_ctx, n_threads=1)


def test_the_context_size_reported_is_the_one_asked_for(generator_model_path):
    gen = Generator(generator_model_path, n_ctx=256, n_threads=1)
    assert gen.n_ctx == gen.config.n_ctx == 256


@pytest.mark.parametrize("text", [None, b"bytes", 123], ids=["none", "bytes", "int"])
def test_the_embedder_says_a_text_must_be_a_str(embedder, text):
    for call in (embedder.embed_query, embedder.count_tokens, embedder.token_offsets):
        with pytest.raises(InputError, match="text must be a str"):
            call(text)
    with pytest.raises(InputError, match=r"texts\[1\] must be a str"):
        embedder.embed(["fine", text])
    with pytest.raises(InputError, match="texts must be a sequence of str"):
        embedder.embed(text)


def test_the_embedder_refuses_a_lone_surrogate(embedder):
    for call in (embedder.embed_query, embedder.count_tokens, embedder.token_offsets):
        with pytest.raises(InputError, match="surrogate"):
            call(SURROGATE)
    with pytest.raises(InputError, match=r"texts\[0\].*surrogate"):
        embedder.embed([SURROGATE])
