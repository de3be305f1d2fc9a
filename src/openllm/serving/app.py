"""The HTTP application: TGI routes (`/`, `/generate`, `/generate_stream`, `/tokenize`, `/info`), OpenAI routes
(`/v1/completions`, `/v1/chat/completions`, `/v1/models`), `/health`, `/metrics`, `/model-info`, and the chat page.

Every route hands its request to the shared `Engine` and awaits the tokens it reports, so requests from many
clients are generated together in one batch; the event loop never runs the model.
"""

import asyncio
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import APIError, Dispatcher, ServerConfig, error_response, length_checker
from .chat_page import chat_page
from .engine import Engine
from .metrics import ServerMetrics
from .openai_routes import add_openai_routes
from .protocol import tgi_error
from .tgi_routes import add_tgi_routes

ROUTES = ("/", "/generate", "/generate_stream", "/tokenize", "/info", "/health", "/metrics", "/model-info",
          "/v1/models", "/v1/completions", "/v1/chat/completions", "/chat")

__all__ = ["ServerConfig", "create_app"]


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    metrics = engine.metrics or ServerMetrics()
    engine.metrics = metrics
    metrics.tokens_per_second.set_function(engine.tokens_per_second)
    context = engine.context_length

    async def lifespan(app):
        engine.on_step = Dispatcher(asyncio.get_running_loop())
        if not engine.alive:
            engine.start()
        yield
        engine.stop()

    app = FastAPI(title="OpenLLM server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine, app.state.config, app.state.metrics = engine, config, metrics

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return error_response(request.url.path, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found" if error.status_code == 404 else "validation"
        message = f"No route {request.method} {request.url.path}." if error.status_code in (404, 405) else str(
            error.detail)
        return error_response(request.url.path, APIError(error.status_code, message, kind))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        return error_response(request.url.path, APIError(500, f"{type(error).__name__}: {error}", "internal"))

    app.add_middleware(GuardMiddleware, config=config, metrics=metrics)

    check_length = length_checker(context, config.default_max_new_tokens)
    add_tgi_routes(app, engine, config, metrics, check_length)
    add_openai_routes(app, engine, config, metrics, check_length)

    @app.get("/health")
    async def health():
        """TGI: 200 with an empty body while the generation worker runs; 503 otherwise."""
        if not engine.alive:
            return JSONResponse(tgi_error("unhealthy", "healthcheck"), status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model-info")
    async def model_info():
        return {"model_id": config.model_name, **(config.model_info or {}), "context_length": context,
                "chat_template": bool(getattr(engine.tokenizer, "chat_template", None))}

    if config.ui:
        @app.get("/chat", response_class=HTMLResponse, include_in_schema=False)
        async def chat():
            return HTMLResponse(chat_page(config.model_name))

    @app.get("/", include_in_schema=False)
    async def root(request: Request):
        if config.ui and "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(chat_page(config.model_name))
        hint = " The chat page is at /chat." if config.ui else ""
        raise APIError(404, f"GET / serves the chat page to browsers; the TGI API is POST /.{hint}", "not_found")

    return app


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

    def _authorized(self, headers: dict) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.config.api_key.encode())
