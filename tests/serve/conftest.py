"""One real server per session: ``bakeoff serve`` in a child process on a free loopback port.

It serves the bundled knowledge set (indexed by the server itself into the session's
work folder, as ``bakeoff serve`` does with no arguments) and a small random LoRA
adapter (so "baked" and "hybrid" exist: their answers are not meant to be right), with
an API key, a queue of 4 and one generation thread. Stopping it with SIGTERM must exit 0
with nothing on stderr but uvicorn's own lines.
"""

from __future__ import annotations

import os

import pytest
from lora_files import write_lora

from engine.serve.child import ServerProcess

API_KEY = "test-key-0123456789"
QUEUE = 4
# The clients talk to loopback directly, whatever proxy the environment names.
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


@pytest.fixture(scope="session")
def server(tmp_path_factory, generator_model_path, embedder_dir):
    """The session's server (see the module docstring)."""
    work = tmp_path_factory.mktemp("serve")
    adapter = write_lora(work / "adapter.gguf")
    started = ServerProcess.start(work, "--adapter", str(adapter), "--api-key", API_KEY, "--queue", str(QUEUE),
                                  "--threads", "1")
    yield started
    code, stderr = started.stop()
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]


@pytest.fixture(scope="session")
def client(server):
    """The official ``openai`` client pointed at the server (no retries: errors surface as they are)."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120) as c:
        yield c
