"""The ASGI app: OpenAI-compatible routes, health and metrics, the chat page, and the checks in front.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` false or true:
SSE ``data:`` chunks ending in ``data: [DONE]``), ``GET /health``, ``GET /metrics``
(Prometheus text), ``GET /`` (the chat page, static files of this package).

Every refusal is an OpenAI-style error object with a 4xx status (429/503 with
``Retry-After`` when the queue is full or the server stops); an unexpected failure is
a 500 with the same shape, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.errors import ContextOverflowError, EngineError, InputError
from engine.serve import protocol
from engine.serve.metrics import Metrics
from engine.serve.protocol import ApiError, ChatRequest
from engine.serve.scheduler import Cancelled, Overloaded, Scheduler, Ticket

if TYPE_CHECKING:
    from engine.facade import Engine
    from engine.serve.config import ServeConfig

log = logging.getLogger("engine.serve")
STATIC = Path(__file__).parent / "static"
#: Paths served without the bearer token: the health probe, and the page's static files
#: (no data: the page sends the key, which it asks for, with each API call).
PUBLIC = ("/health", "/", "/favicon.ico")


def offered_models(engine: Engine, kv_cache: bool) -> tuple[str, ...]:
    """One model id per mode the loaded parts allow, plus the spliced variants with a chunk-KV cache."""
    ids: list[str] = [m for m in ("rag", "baked", "hybrid") if m in engine.modes]
    if kv_cache:
        ids += [f"{m}-spliced" for m in ("rag", "hybrid") if m in engine.modes]
    return tuple(ids)


class State:
    """What the routes share: the engine, its scheduler, the figures, the settings."""

    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine, self.config = engine, config
        self.models = offered_models(engine, config.kv_cache)
        self.metrics = Metrics()
        self.created = int(time.time())
        self.scheduler: Scheduler | None = None

    def drain(self) -> None:
        """Cancel every request in flight and refuse new ones (the server is stopping)."""
        if self.scheduler is not None:
            self.scheduler.drain()

    @property
    def queue(self) -> Scheduler:
        if self.scheduler is None:
            raise ApiError(503, "the server is starting or stopping", kind="server_error",
                           headers={"Retry-After": "2"})
        return self.scheduler


def create_app(engine: Engine, config: ServeConfig) -> Starlette:
    """The app serving ``engine``; its lifespan starts the scheduler and, at shutdown, cancels
    what is in flight and closes the engine."""
    state = State(engine, config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler = Scheduler(engine, max_waiting=config.max_waiting, deadline_s=config.deadline_s)
        try:
            yield
        finally:
            scheduler, state.scheduler = state.scheduler, None
            await asyncio.to_thread(scheduler.close)
            await asyncio.to_thread(engine.close)

    routes = [
        Route("/v1/chat/completions", _endpoint(state, chat), methods=["POST"]),
        Route("/v1/models", _endpoint(state, list_models), methods=["GET"]),
        Route("/v1/models/{model}", _endpoint(state, get_model), methods=["GET"]),
        Route("/health", _endpoint(state, health), methods=["GET"]),
        Route("/metrics", _endpoint(state, metrics), methods=["GET"]),
        Route("/", lambda request: FileResponse(STATIC / "index.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(BearerAuth, api_key=config.api_key)]
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    app.state.serve = state
    return app


def _endpoint(state: State, handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(state, request)
        except ApiError as error:
            return error_response(error)
    return endpoint


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                                   kind="server_error"))


class BearerAuth:
    """Every path but the public ones needs ``Authorization: Bearer <api_key>`` (when a key is set)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in PUBLIC or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        error = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (the server's --api-key)",
                         kind="authentication_error", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})
        await error_response(error)(scope, receive, send)


# Routes ---------------------------------------------------------------------------------


async def health(state: State, request: Request) -> Response:
    scheduler = state.scheduler
    return JSONResponse({"status": "ok" if scheduler is not None else "stopping", "models": list(state.models),
                         "waiting": scheduler.waiting if scheduler else 0,
                         "running": scheduler.running if scheduler else 0})


async def metrics(state: State, request: Request) -> Response:
    scheduler = state.queue
    text = state.metrics.render(scheduler.waiting, scheduler.running, scheduler.max_waiting)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def list_models(state: State, request: Request) -> Response:
    return JSONResponse(protocol.models_list(state.models, state.created))


async def get_model(state: State, request: Request) -> Response:
    model = request.path_params["model"]
    if model not in state.models:
        raise ApiError(404, f"the model {model!r} does not exist here: this server offers " + ", ".join(state.models),
                       param="model", code="model_not_found")
    return JSONResponse(protocol.models_list((model,), state.created)["data"][0])


async def chat(state: State, request: Request) -> Response:
    arrived = time.perf_counter()
    body = await _body(request, state.config.max_body_bytes)
    try:
        parsed = protocol.parse_chat_request(body, state.models)
    except ApiError as error:
        state.metrics.request("invalid", error.status)
        raise
    scheduler = state.queue
    try:
        ticket = scheduler.submit(parsed)
    except Overloaded as full:
        status = 503 if full.stopping else 429
        state.metrics.request(parsed.model, status)
        raise ApiError(status, str(full), kind="server_error" if full.stopping else "rate_limit_error",
                       code="server_shutting_down" if full.stopping else "queue_full",
                       headers={"Retry-After": str(full.retry_after_s)}) from None
    async with _watching(request, scheduler, ticket):  # a client that leaves cancels its request
        kind, value = await _next_event(scheduler, ticket)
        if kind == "error":  # before anything was sent: a proper status
            refusal = _as_api_error(value, state)
            state.metrics.request(parsed.model, refusal.status)
            raise refusal
        state.metrics.ttft[parsed.model].observe(time.perf_counter() - arrived)
        if parsed.stream:  # sse-starlette watches the client from here on
            events = _stream(state, ticket, (kind, value), arrived)
            return EventSourceResponse(events, sep="\n", ping=15, headers={"Cache-Control": "no-store"})
        while kind == "piece":  # the answer carries the whole text
            kind, value = await _next_event(scheduler, ticket)
    if kind == "error":
        refusal = _as_api_error(value, state)
        state.metrics.request(parsed.model, refusal.status)
        raise refusal
    state.metrics.total[parsed.model].observe(time.perf_counter() - arrived)
    state.metrics.request(parsed.model, 200)
    return JSONResponse(protocol.completion(protocol.completion_id(), parsed, value))


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413, f"the request body is {declared} bytes, more than the {limit} accepted", code="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is more than the {limit} bytes accepted", code="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


@asynccontextmanager
async def _watching(request: Request, scheduler: Scheduler, ticket: Ticket) -> AsyncIterator[None]:
    """Cancel ``ticket`` if the client disconnects while the block runs (its body is read already)."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scheduler.cancel(ticket, "disconnect")

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def _next_event(scheduler: Scheduler, ticket: Ticket) -> tuple[str, Any]:
    """The next event of ``ticket``, or a deadline error once its deadline passes (the ticket is then cancelled)."""
    try:
        async with asyncio.timeout_at(_loop_time(ticket.deadline)):
            return await ticket.events.get()
    except TimeoutError:
        scheduler.cancel(ticket, "deadline")
        return "error", Cancelled("deadline")


def _loop_time(monotonic_deadline: float) -> float:
    # asyncio's loop clock is time.monotonic() on every platform CPython supports.
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


def _as_api_error(error: BaseException, state: State | None) -> ApiError:
    if isinstance(error, Cancelled):
        if state is not None:
            state.metrics.cancelled[error.reason] += 1
        if error.reason == "deadline":
            return ApiError(504, "the request's deadline passed before it was answered: retry, or ask for fewer "
                                 "max_tokens", kind="server_error", code="deadline_exceeded")
        if error.reason == "shutdown":
            return ApiError(503, "the server is shutting down", kind="server_error", code="server_shutting_down",
                            headers={"Retry-After": "5"})
        return ApiError(499, "the client closed the request", kind="invalid_request_error", code="client_closed")
    if isinstance(error, ContextOverflowError):
        return ApiError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, InputError):
        return ApiError(400, str(error))
    if isinstance(error, EngineError):
        return ApiError(500, f"{type(error).__name__}: {error}", kind="server_error")
    log.error("unexpected error while answering", exc_info=error)
    return ApiError(500, f"internal error ({type(error).__name__}); the server log has the details", kind="server_error")


async def _stream(state: State, ticket: Ticket, first: tuple[str, Any], arrived: float) -> AsyncIterator[str]:
    """The SSE body: the first piece (with the role), the others, then the last chunk and ``[DONE]``."""
    request: ChatRequest = ticket.request
    scheduler = state.queue
    cid = protocol.completion_id()
    finished = False
    try:
        kind, value = first
        text = value if kind == "piece" else ""
        yield json.dumps(protocol.chunk(cid, request, {"role": "assistant", "content": text}))
        while kind == "piece":
            kind, value = await _next_event(scheduler, ticket)
            if kind == "piece":
                yield json.dumps(protocol.chunk(cid, request, {"content": value}))
        finished = True
        if kind == "answer":
            state.metrics.total[request.model].observe(time.perf_counter() - arrived)
            state.metrics.request(request.model, 200)
            yield json.dumps(protocol.last_chunk(cid, request, value))
        else:
            error = _as_api_error(value, state)
            state.metrics.request(request.model, error.status)
            yield json.dumps(error.body())
        yield "[DONE]"
    finally:
        if not finished:  # the client left mid-stream (sse-starlette cancels this generator)
            scheduler.cancel(ticket, "disconnect")
            state.metrics.cancelled["disconnect"] += 1
            state.metrics.request(request.model, 499)
