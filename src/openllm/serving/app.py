"""The HTTP application: one router per family of routes, each a module of its own: `tgi_routes` (`/`, `/generate`,
`/generate_stream`, `/tokenize`, `/info`), `openai_routes` (`/v1/completions`, `/v1/chat/completions`, `/v1/models`),
`server_routes` (`/health`, `/metrics`, `/model-info`, `GET /`, `/v1/tools`) and `chat_page` (`/chat`). The routes
read the engine, the settings and the metrics from `app.state`.

Every route hands its request to the shared `Engine` and awaits the tokens it reports, so requests from many
clients are generated together in one batch; the event loop never runs the model.
"""

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tools import TOOLS
from . import chat_page, openai_routes, server_routes, tgi_routes
from .api import APIError, Dispatcher, ServerConfig, error_response
from .engine import Engine
from .metrics import ServerMetrics

logger = logging.getLogger("openllm.serve")

ROUTES = ("/", "/generate", "/generate_stream", "/tokenize", "/info", "/health", "/metrics", "/model-info",
          "/v1/models", "/v1/completions", "/v1/chat/completions", "/chat", "/v1/tools",
          *(f"/v1/tools/{name}" for name in TOOLS))

__all__ = ["ServerConfig", "create_app", "init_app_state", "lifespan"]


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="OpenLLM server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    init_app_state(app, engine, config)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_middleware(GuardMiddleware, config=config, metrics=app.state.metrics)
    app.include_router(tgi_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(server_routes.router)
    if config.ui:
        app.include_router(chat_page.router)
    return app


def init_app_state(app: FastAPI, engine: Engine, config: ServerConfig) -> None:
    """What every router reads from `app.state`: the engine, the server's settings and its metrics (the engine's
    own, when it has them, so the engine and the routes count into one registry)."""
    metrics = engine.metrics or ServerMetrics()
    engine.metrics = metrics
    metrics.tokens_per_second.set_function(engine.tokens_per_second)
    app.state.engine, app.state.config, app.state.metrics = engine, config, metrics


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Runs the engine while the app serves; its `Dispatcher` (also `app.state.dispatcher`) hands each step's
    outputs to the requests on this event loop."""
    engine = app.state.engine
    app.state.dispatcher = engine.on_step = Dispatcher(asyncio.get_running_loop())
    if not engine.alive:
        engine.start()
    yield
    engine.stop()


async def api_error(request: Request, error: APIError):
    return error_response(request.url.path, error)


async def http_error(request: Request, error: StarletteHTTPException):
    kind = "not_found" if error.status_code == 404 else "validation"
    message = f"No route {request.method} {request.url.path}." if error.status_code in (404, 405) else str(
        error.detail)
    return error_response(request.url.path, APIError(error.status_code, message, kind))


async def unexpected_error(request: Request, error: Exception):
    # the traceback goes to the server's log; the client learns only that it failed (an exception's text can hold
    # paths, prompts of other requests or configuration)
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return error_response(request.url.path, APIError(500, "Internal server error; the server's log has the details.",
                                                     "internal"))


def is_public(method: str, path: str, headers: dict) -> bool:
    """Routes open without the API key: the health check and the chat page (which asks for the key itself)."""
    if path in ("/health", "/chat"):
        return True
    return path == "/" and method == "GET" and "text/html" in headers.get(b"accept", b"").decode("latin-1")


class GuardMiddleware:
    """Checks the API key (every route but /health and the chat page) and counts requests by route and status, with
    their latency up to the last byte of the response (so streamed generations count in full)."""

    def __init__(self, app, config: ServerConfig, metrics: ServerMetrics):
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            if not self._host_allowed(headers):
                hosts = ", ".join(sorted(self.config.allowed_hosts))
                response = error_response(path, APIError(
                    400, f"This server answers only requests addressed to {hosts} (it is bound to loopback); "
                         "start it with --allowed-hosts NAME to accept another `Host`.", "validation"))
                await response(scope, receive, send_and_record)
                return
            if self.config.api_key and not is_public(scope["method"], path, headers) and \
                    not self._authorized(headers):
                response = error_response(path, APIError(
                    401, "Missing or wrong API key: send the header `Authorization: Bearer <key>`.", "unauthorized"))
                await response(scope, receive, send_and_record)
                return
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(route=route).observe(time.perf_counter() - started)

    def _host_allowed(self, headers: dict) -> bool:
        if self.config.allowed_hosts is None:
            return True
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]  # without port
        return name in self.config.allowed_hosts

    def _authorized(self, headers: dict) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.config.api_key.encode())
