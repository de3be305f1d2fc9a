"""The server's own routes, outside both protocols: `/health` (TGI's answer), `/metrics` (Prometheus),
`/model-info`, `GET /`, the chat page for browsers, and the built-in tools (`openllm.tools`): `GET /v1/tools` lists
their schemas, ready for a chat request's `tools`, and `POST /v1/tools/{name}` runs one call, so that a client without
tools of its own (the chat page) can answer the calls the model makes."""

import copy

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..tools import TOOLS, call_tool
from ..tools.calculator import MAX_LENGTH
from .api import APIError, ServerConfig, off_loop, read_json
from .chat_page import chat_page
from .engine import Engine
from .protocol import tgi_error
from .schemas import ToolRunRequest

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


# the calculator's own limits on its expression, stated in its schema: a grammar (`tool_choice: "required"`) then keeps
# a model's expression to what the calculator reads, at most MAX_LENGTH of the characters it accepts (an untrained
# model's free string tends to run on until `max_tokens` cuts the call)
EXPRESSION_BOUNDS = {"maxLength": MAX_LENGTH, "pattern": r"^[0-9._eE+\-*/%() ]+$"}


def served_tools() -> list[dict]:
    """The built-in tools' schemas in OpenAI's form (without the `return` key the chat template reads)."""
    schemas = []
    for tool in TOOLS.values():
        schema = copy.deepcopy(tool.schema)
        schema["function"].pop("return", None)
        if tool.name == "calculator":
            schema["function"]["parameters"]["properties"]["expression"].update(EXPRESSION_BOUNDS)
            schema["function"]["parameters"]["additionalProperties"] = False
        schemas.append(schema)
    return schemas


@router.get("/v1/tools")
async def tools():
    return {"object": "list", "data": served_tools()}


@router.post("/v1/tools/{name}")
async def run_tool(request: Request, name: str):
    """Run one call of a built-in tool: `{"arguments": {...}}` (or their JSON text) in, `{"content": ...}` out, a
    failed call's content being an "error: ..." message, as the model would read it."""
    if name not in TOOLS:
        raise APIError(404, f"No built-in tool {name[:40]!r}; the tools are {', '.join(TOOLS)} (GET /v1/tools).",
                       "not_found")
    body = await read_json(request, ToolRunRequest, request.app.state.config.max_body_bytes)
    return {"content": await off_loop(call_tool, name, body.arguments)}
