"""LangChain's ChatOpenAI, unchanged, pointed at the server: invoke and stream."""

from __future__ import annotations

import pytest

langchain_openai = pytest.importorskip("langchain_openai")


def test_langchain_chat_openai_invokes_and_streams(server):
    chat = langchain_openai.ChatOpenAI(base_url=server.base_url, api_key=server.api_key, model="rag", max_tokens=8,
                                       temperature=0, max_retries=0)
    reply = chat.invoke("Who founded Fenwhistle Aquatronics?")
    assert reply.content.strip()
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    streamed = "".join(chunk.content for chunk in chat.stream("Who founded Fenwhistle Aquatronics?"))
    assert streamed == reply.content
