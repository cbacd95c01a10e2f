"""Security defaults and malformed requests against the real server: every refusal is an OpenAI-style
error object with a 4xx status (never a 500 or a traceback), the key guards every endpoint but /health,
bodies are bounded, there is no CORS unless asked for, and an unsafe --host is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

CHAT = "/v1/chat/completions"
GOOD = {"model": "rag", "messages": [{"role": "user", "content": "Who founded Fenwhistle?"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c


def assert_error(response: httpx.Response, status: int, match: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    assert match.lower() in error["message"].lower(), error["message"]
    return error


def post(http, body: bytes | dict, **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(CHAT, content=content, headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("body, status, match", [
    (b"{not json", 400, "not JSON"),
    (b"\xff\xfe{\"model\": \"rag\"}", 400, "not valid UTF-8"),
    (b"[1, 2]", 400, "JSON object"),
    (b"", 400, "not JSON"),
    ({**GOOD, "model": 7}, 400, "'model' must be"),
    ({**GOOD, "model": "gpt-4o"}, 404, "does not exist"),
    ({**GOOD, "messages": []}, 400, "non-empty array"),
    ({**GOOD, "messages": "Who?"}, 400, "non-empty array"),
    ({**GOOD, "messages": [{"role": "user"}]}, 400, "empty"),
    ({**GOOD, "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, "must be a string"),
    ({**GOOD, "messages": [{"role": "wizard", "content": "Hi"}]}, 400, "role must be"),
    ({**GOOD, "messages": [{"role": "assistant", "content": "Hi"}]}, 400, "no user message"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text only"),
    ({**GOOD, "messages": [{"role": "user", "content": "What is \ud800 this?"}]}, 400, "surrogate"),
    ({**GOOD, "max_tokens": "8"}, 400, "max_tokens"),
    ({**GOOD, "max_tokens": 10**9}, 400, "max_tokens"),
    ({**GOOD, "temperature": -1}, 400, "temperature"),
    ({**GOOD, "temperature": "hot"}, 400, "temperature"),
    ({**GOOD, "stream": "yes"}, 400, "stream"),
    ({**GOOD, "stop": [1]}, 400, "stop"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({**GOOD, "n": 2}, 400, "'n' must be 1"),
    ({**GOOD, "messages": [{"role": "user", "content": "x" * 100_000}]}, 400, "characters long"),
], ids=lambda v: v if isinstance(v, (int, str)) else None)
def test_a_malformed_request_is_a_4xx_openai_error(http, body, status, match):
    assert_error(post(http, body), status, match)


def test_a_one_megabyte_message_is_refused_before_it_is_read(http):
    message = {**GOOD, "messages": [{"role": "user", "content": "word " * 200_000}]}
    assert_error(post(http, message), 413, "bytes")


def test_a_question_too_long_for_the_context_is_a_400(http):
    message = {**GOOD, "model": "baked", "messages": [{"role": "user", "content": "pump " * 3000}]}
    assert_error(post(http, message), 400)


def test_the_key_guards_every_endpoint_but_health_and_the_page(server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/health").json()["status"] == "ok"
        assert anonymous.get("/").status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", CHAT), ("GET", "/metrics"), ("GET", "/v1/models/rag")):
            error = assert_error(anonymous.request(method, path, json=GOOD), 401, "API key")
            assert error["code"] == "invalid_api_key"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer not-the-key"})
        assert_error(wrong, 401)


def test_unknown_paths_and_methods_are_openai_errors(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_no_cors_unless_asked_for(http):
    response = http.options(CHAT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in post(http, GOOD, Origin="https://evil.example").headers


def test_health_and_metrics(http):
    assert http.post(CHAT, json=GOOD).status_code == 200
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["rag", "baked", "hybrid"]
    text = http.get("/metrics").text
    assert 'bakeoff_requests_total{model="rag",status="200"}' in text
    assert "bakeoff_queue_depth 0" in text and "bakeoff_queue_capacity 4" in text
    assert 'bakeoff_ttft_seconds_bucket{model="rag",le="+Inf"}' in text
    assert 'bakeoff_total_seconds_count{model="rag"}' in text


def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--api-key" in done.stderr
