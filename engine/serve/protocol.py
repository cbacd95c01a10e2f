"""The OpenAI chat-completions protocol as this server speaks it: requests checked, responses built.

Nothing here touches the network or the engine: a request body (bytes) becomes a
:class:`ChatRequest` or an :class:`ApiError` (status, OpenAI-style error object), and an
:class:`engine.Answer` becomes a response object or the last chunk of a stream.

Our extension field is ``bakeoff`` (on a response, and on the last chunk of a stream):
the mode, the citations with the passage text the model was shown, and the stage
timings. Plain clients ignore unknown fields.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.answer.types import Mode, SpliceMode

if TYPE_CHECKING:
    from engine.answer import Answer

#: Model ids a server may offer: the mode, and the spliced variants (chunk-KV cache on).
MODEL_IDS: dict[str, tuple[Mode, SpliceMode]] = {
    "rag": ("rag", "off"), "baked": ("baked", "off"), "hybrid": ("hybrid", "off"),
    "rag-spliced": ("rag", "on"), "hybrid-spliced": ("hybrid", "on"),
}
#: Most characters of one message, and of all messages together (a 135M model reads
#: 2,048 tokens at most; longer text is refused before anything is tokenized).
MAX_MESSAGE_CHARS = 16_000
MAX_MESSAGES = 64
MAX_STOPS = 4
MAX_STOP_CHARS = 64
#: ``max_tokens`` when the request gives none, and the most it may ask for.
DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_LIMIT = 1024
_ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """A request the server answers with an OpenAI-style error object and ``status``."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``, as OpenAI's API sends it."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request: the question is the last user message."""

    model: str
    mode: Mode
    splice: SpliceMode  # "on" for the -spliced models
    question: str
    earlier_turns: int  # messages before the question (not used: see the README's "Server")
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    deadline_s: float | None = None  # our extension: a shorter deadline than the server's


def parse_chat_request(body: bytes, offered: tuple[str, ...]) -> ChatRequest:
    """Check a ``POST /v1/chat/completions`` body against the models ``offered``.

    Raises:
        ApiError: 400 for a body that is not UTF-8 JSON, a wrong type, a missing or empty
            field, an unsupported value; 404 for a model this server does not offer.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {error.start}): send UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ApiError(400, f"the request body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_type(data)}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a non-empty string: one of " + ", ".join(offered), param="model")
    if model not in offered:
        raise ApiError(404, f"the model {model!r} does not exist here: this server offers " + ", ".join(offered),
                       param="model", code="model_not_found")
    mode, splice = MODEL_IDS[model]
    question, earlier = _question(data.get("messages"))
    n = data.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, f"'n' must be 1 (one answer per request), got {n!r}", param="n")
    stream = _optional(data, "stream", bool, False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"'stream_options' must be an object, got {_json_type(options)}", param="stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    max_tokens = _max_tokens(data)
    temperature = _optional(data, "temperature", float, 0.0)
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"'temperature' must be between 0 and 2, got {temperature!r}", param="temperature")
    return ChatRequest(model, mode, splice, question, earlier, stream, include_usage, max_tokens, temperature,
                       _stops(data.get("stop")), _extension(data.get("bakeoff")))


def _question(messages: object) -> tuple[str, int]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array of {role, content} objects", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"'messages' holds {len(messages)} messages, at most {MAX_MESSAGES} are accepted",
                       param="messages")
    question_at = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content', got {_json_type(message)}",
                           param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", param=where)
        content = _content(message.get("content"), where)
        if role == "user":
            question_at, question = i, content
    if question_at is None:
        raise ApiError(400, "'messages' has no user message: the last user message is the question",
                       param="messages")
    if not question.strip():
        raise ApiError(400, f"messages[{question_at}].content is empty: ask something", param="messages")
    return question, question_at


def _content(content: object, where: str) -> str:
    """A message's text: a string, or an array of text parts (joined), or null (assistant tool calls)."""
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}.content parts must be {{'type': 'text', 'text': str}}: "
                                    "this server reads text only", param=where)
            parts.append(part["text"])
        content = "\n".join(parts)
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string or an array of text parts, got {_json_type(content)}",
                       param=where)
    if len(content) > MAX_MESSAGE_CHARS:
        raise ApiError(400, f"{where}.content is {len(content)} characters long, at most {MAX_MESSAGE_CHARS} are "
                            "accepted: shorten the question", param=where, code="message_too_long")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in content):
        raise ApiError(400, f"{where}.content holds a lone UTF-16 surrogate: send valid Unicode text", param=where)
    return content


def _extension(options: object) -> float | None:
    """Our request extension ``{"bakeoff": {"deadline_s": seconds}}`` (plain clients never send it)."""
    if options is None:
        return None
    if not isinstance(options, dict) or not set(options) <= {"deadline_s"}:
        raise ApiError(400, "'bakeoff' takes an object with 'deadline_s' only", param="bakeoff")
    deadline = options.get("deadline_s")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not 0 < deadline <= 3600):
        raise ApiError(400, f"'bakeoff.deadline_s' must be a number of seconds in (0, 3600], got {deadline!r}",
                       param="bakeoff")
    return float(deadline) if deadline is not None else None


def _max_tokens(data: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise ApiError(400, f"'{name}' must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {value!r}", param=name)
        return value
    return DEFAULT_MAX_TOKENS


def _stops(stop: object) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise ApiError(400, f"'stop' must be a string or an array of at most {MAX_STOPS} non-empty strings of at "
                            f"most {MAX_STOP_CHARS} characters, got {stop!r:.80}", param="stop")
    return tuple(stops)


def _optional(data: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ApiError(400, f"'{name}' must be a {'boolean' if kind is bool else 'number'}, got {value!r:.80}",
                   param=name)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# Responses ------------------------------------------------------------------------------


def completion_id() -> str:
    """A fresh id for one completion (every chunk of a stream carries it)."""
    return "chatcmpl-" + uuid.uuid4().hex


_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context_full": "length"}


def extension(answer: Answer, request: ChatRequest) -> dict[str, Any]:
    """The ``bakeoff`` field: mode, citations (with the passage text shown to the model), stage timings in ms."""
    t = answer.timings
    timings = {"retrieval_ms": t.retrieval_ms, "prompt_build_ms": t.prompt_build_ms, "kv_ms": t.kv_ms,
               "prefill_ms": t.generation.prefill_ms, "decode_ms": t.generation.decode_ms,
               "ttft_ms": t.ttft_ms, "total_ms": t.total_ms, "splice_ms": t.generation.splice_ms,
               "prompt_tokens": t.generation.prompt_tokens, "reused_tokens": t.generation.reused_tokens,
               "spliced_tokens": t.generation.spliced_tokens, "decode_tokens": t.generation.decode_tokens}
    citations = [{"label": c.label, "source": c.source, "chunk_id": c.chunk_id, "heading": c.heading,
                  "span": list(c.span), "text": c.text, "cited": c.cited} for c in answer.citations]
    return {"mode": answer.mode, "splice": request.splice, "earlier_turns_ignored": request.earlier_turns,
            "citations": citations, "timings": timings}


def usage(answer: Answer) -> dict[str, int]:
    prompt, completion = answer.timings.generation.prompt_tokens, answer.timings.generation.decode_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, request: ChatRequest, answer: Answer) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished answer."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text, "refusal": None},
                         "logprobs": None, "finish_reason": _FINISH.get(answer.stop_reason, "stop")}],
            "usage": usage(answer), "system_fingerprint": None, "bakeoff": extension(answer, request)}


def chunk(cid: str, request: ChatRequest, delta: dict[str, str], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream."""
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": request.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


def last_chunk(cid: str, request: ChatRequest, answer: Answer) -> dict[str, Any]:
    """The chunk that ends a stream: the finish reason, the extension field (and usage when asked)."""
    extra: dict[str, Any] = {"bakeoff": extension(answer, request)}
    if request.include_usage:
        extra["usage"] = usage(answer)
    return chunk(cid, request, {}, _FINISH.get(answer.stop_reason, "stop"), **extra)


def models_list(offered: tuple[str, ...], created: int) -> dict[str, Any]:
    """``GET /v1/models``: one model id per mode this server can answer in."""
    return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "bakeoff"}
                                       for m in offered]}
