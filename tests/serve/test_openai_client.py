"""The official ``openai`` client against a real ``bakeoff serve``: answers, streams, models, errors."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

QUESTION = "Who founded Fenwhistle Aquatronics?"


def ask(client, model="rag", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=kwargs.pop("max_tokens", 16), **kwargs)


def test_models_list_has_one_id_per_mode_the_parts_allow(client):
    assert [m.id for m in client.models.list()] == ["rag", "baked", "hybrid"]
    assert client.models.retrieve("baked").id == "baked"


def test_a_non_streaming_answer_has_text_usage_citations_and_timings(client):
    completion = ask(client)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 100 and 0 < completion.usage.completion_tokens <= 16
    extension = completion.model_extra["bakeoff"]
    assert extension["mode"] == "rag"
    citations = extension["citations"]
    assert len(citations) == 3 and all(c["text"] and c["source"].endswith(".md") for c in citations)
    assert any("Varkonen" in c["text"] for c in citations)  # the passage that answers was shown to the model
    timings = extension["timings"]
    assert 0 < timings["ttft_ms"] <= timings["total_ms"]
    assert timings["retrieval_ms"] > 0 and timings["prefill_ms"] > 0


def test_a_streamed_answer_equals_the_answer_and_ends_with_the_extension(client):
    whole = ask(client, max_tokens=12).choices[0].message.content
    chunks = list(ask(client, max_tokens=12, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["bakeoff"]["citations"]
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_every_mode_answers(client):
    for model in ("baked", "hybrid"):
        completion = ask(client, model, max_tokens=6)
        assert completion.model == model
        assert completion.model_extra["bakeoff"]["mode"] == model
        assert bool(completion.model_extra["bakeoff"]["citations"]) == (model == "hybrid")


def test_max_tokens_stop_and_temperature_are_honoured(client):
    long = ask(client, max_tokens=12).choices[0]
    assert long.finish_reason == "length" or long.message.content
    stop_at = long.message.content.split()[1]  # the second word of the greedy answer
    stopped = ask(client, max_tokens=12, stop=[stop_at]).choices[0]
    assert stopped.finish_reason == "stop" and stop_at not in stopped.message.content
    assert ask(client, max_tokens=3).usage.completion_tokens <= 3
    sampled = ask(client, max_tokens=8, temperature=1.5)
    assert sampled.choices[0].message.content is not None


def test_earlier_turns_are_reported_and_the_last_user_message_is_the_question(client):
    completion = client.chat.completions.create(model="rag", max_tokens=8, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": QUESTION}])
    assert completion.model_extra["bakeoff"]["earlier_turns_ignored"] == 3
    assert any("Varkonen" in c["text"] for c in completion.model_extra["bakeoff"]["citations"])


def test_errors_surface_as_the_clients_exception_types(client, server):
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        ask(client, "gpt-4o")
    with pytest.raises(openai.BadRequestError, match="non-empty array"):
        client.chat.completions.create(model="rag", messages=[])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        ask(client, max_tokens=0)
    with openai.OpenAI(base_url=server.base_url, api_key="wrong-key-123", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with pytest.raises(openai.BadRequestError, match="characters long"):
        client.chat.completions.create(model="rag", messages=[{"role": "user", "content": "x" * 20_000}])


def test_a_deadline_the_request_cannot_meet_is_a_504_not_a_hang(client):
    with pytest.raises(openai.InternalServerError, match="deadline"):
        ask(client, max_tokens=64, extra_body={"bakeoff": {"deadline_s": 0.05}})
    with pytest.raises(openai.APIError, match="deadline"):
        list(ask(client, max_tokens=64, stream=True, extra_body={"bakeoff": {"deadline_s": 0.05}}))
    assert ask(client, max_tokens=4).choices[0].message.content is not None  # the model is free again
