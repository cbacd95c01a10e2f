"""``bakeoff serve``: the engine behind an OpenAI-compatible HTTP API, with an offline chat page.

Needs the ``serve`` extra (Starlette, uvicorn, sse-starlette): ``pip install -e '.[serve]'``.
``import engine`` never imports this package; importing it without the extra raises
:class:`~engine.errors.MissingExtraError`.

Modules: :mod:`~engine.serve.protocol` (requests checked, responses built),
:mod:`~engine.serve.scheduler` (one model, a bounded FIFO), :mod:`~engine.serve.metrics`
(Prometheus text), :mod:`~engine.serve.app` (routes and checks),
:mod:`~engine.serve.server` (uvicorn, shutdown), ``static/`` (the chat page).
"""

from __future__ import annotations

from engine.errors import MissingExtraError

try:
    import sse_starlette  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as missing:
    raise MissingExtraError(f"bakeoff serve needs the 'serve' extra ({missing.name} is not installed): "
                            "pip install -e '.[serve]'") from None

from engine.serve.app import create_app
from engine.serve.config import ServeConfig
from engine.serve.server import serve

__all__ = ["ServeConfig", "create_app", "serve"]
