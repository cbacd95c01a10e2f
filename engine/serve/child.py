"""``bakeoff serve`` in a child process: how a desktop app (or a test, or a bench) starts and stops it.

The child listens on a free loopback port (``--port 0``) and prints the address it took;
:meth:`ServerProcess.start` waits for that line. :meth:`ServerProcess.stop` sends SIGTERM
(the server's clean shutdown: requests in flight are cancelled) and returns the exit code
and what the child wrote on stderr.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine._memory import resident_bytes
from engine.errors import EngineError


@dataclass
class ServerProcess:
    """A running ``bakeoff serve`` child: its base URL, key, process and log files."""

    url: str  # http://127.0.0.1:PORT
    api_key: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    @classmethod
    def start(cls, work: Path, *args: str, timeout_s: float = 180.0) -> ServerProcess:
        """``python -m engine serve --port 0 --work WORK ARGS``, once it listens.

        Raises:
            EngineError: the child exited, or did not listen within ``timeout_s`` (it is killed);
                the message holds the end of its stderr.
        """
        work.mkdir(parents=True, exist_ok=True)
        out, err = work / "serve.stdout", work / "serve.stderr"
        with out.open("w") as stdout, err.open("w") as stderr:  # the child keeps its own copies
            process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", "--work", str(work),
                                        *args], stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        key = args[args.index("--api-key") + 1] if "--api-key" in args else ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = out.read_text()
            if "listening on " in text:
                return cls(text.split("listening on ", 1)[1].split()[0], key, process, err)
            if process.poll() is not None:
                raise EngineError(f"bakeoff serve exited with {process.returncode}: {err.read_text()[-2000:]}")
            time.sleep(0.05)
        process.kill()
        process.wait()
        raise EngineError(f"bakeoff serve did not listen within {timeout_s:.0f} s: {err.read_text()[-2000:]}")

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return self.url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def rss_mb(self) -> float:
        """The child's resident memory, in MiB (Linux)."""
        return resident_bytes(self.process.pid) / 2**20

    def stop(self, timeout_s: float = 60.0) -> tuple[int, str]:
        """SIGTERM, wait; returns ``(exit code, stderr)`` (killed after ``timeout_s``: code -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, self.stderr_path.read_text()
