"""One real server per session: ``bakeoff serve`` in a child process on a free loopback port.

It serves the bundled knowledge set (indexed by the server itself into the session's
work folder, as ``bakeoff serve`` does with no arguments) and a small random LoRA
adapter (so "baked" and "hybrid" exist: their answers are not meant to be right), with
an API key, a queue of 4 and one generation thread. Stopping it with SIGTERM must exit 0
with nothing on stderr but uvicorn's own lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from lora_files import write_lora

API_KEY = "test-key-0123456789"
QUEUE = 4
@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    api_key: str
    process: subprocess.Popen
    stderr: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def start_server(work: Path, *args: str, timeout_s: float = 180.0) -> Server:
    """``python -m engine serve --port 0 ARGS``, once it prints that it listens."""
    out, err = work / "stdout.txt", work / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # the child holds its own copies
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--work", str(work),
                                    *args], stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = out.read_text()
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
            key = args[args.index("--api-key") + 1] if "--api-key" in args else ""
            return Server(url, key, process, err)
        if process.poll() is not None:
            raise AssertionError(f"bakeoff serve exited with {process.returncode}: {err.read_text()[-2000:]}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"bakeoff serve did not listen within {timeout_s} s: {err.read_text()[-2000:]}")


def stop_server(server: Server, timeout_s: float = 60.0) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr."""
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
    return code, server.stderr.read_text()


@pytest.fixture(scope="session")
def server(tmp_path_factory, generator_model_path, embedder_dir):
    """The session's server (see the module docstring)."""
    work = tmp_path_factory.mktemp("serve")
    adapter = write_lora(work / "adapter.gguf")
    started = start_server(work, "--adapter", str(adapter), "--api-key", API_KEY, "--queue", str(QUEUE),
                           "--threads", "1")
    yield started
    code, stderr = stop_server(started)
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]


@pytest.fixture(scope="session")
def client(server):
    """The official ``openai`` client pointed at the server (no retries: errors surface as they are)."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=120) as c:
        yield c


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
