"""The server's own routes, outside both protocols: `/health` (TGI's answer), `/metrics` (Prometheus),
`/model-info`, and `GET /`, the chat page for browsers."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .api import APIError, ServerConfig
from .chat_page import chat_page
from .engine import Engine
from .protocol import tgi_error

router = APIRouter()


def model_summary(engine: Engine, config: ServerConfig) -> dict:
    return {"model_id": config.model_name, **(config.model_info or {}), "context_length": engine.context_length,
            "chat_template": bool(getattr(engine.tokenizer, "chat_template", None))}


def root_page(config: ServerConfig, accept: str) -> str:
    """The chat page when it is on and a browser asks (`accept`: the request's Accept header)."""
    if config.ui and "text/html" in accept:
        return chat_page(config.model_name)
    hint = " The chat page is at /chat." if config.ui else ""
    raise APIError(404, f"GET / serves the chat page to browsers; the TGI API is POST /.{hint}", "not_found")


@router.get("/health")
async def health(request: Request):
    """TGI: 200 with an empty body while the generation worker runs; 503 otherwise."""
    if not request.app.state.engine.alive:
        return JSONResponse(tgi_error("unhealthy", "healthcheck"), status_code=503)
    return Response(status_code=200)


@router.get("/metrics")
async def prometheus(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/model-info")
async def model_info(request: Request):
    return model_summary(request.app.state.engine, request.app.state.config)


@router.get("/", include_in_schema=False)
async def root(request: Request):
    return HTMLResponse(root_page(request.app.state.config, request.headers.get("accept", "")))
