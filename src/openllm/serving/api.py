"""What every route shares: the server's settings, errors rendered in each protocol's shape, reading a JSON body,
and `Generation`, the event-loop side of one request handed to the engine."""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .engine import Engine, QueueFullError, SamplingParams, Sequence, StepOutput
from .metrics import ServerMetrics
from .protocol import Completed, tgi_error


@dataclass
class ServerConfig:
    model_name: str
    api_key: Optional[str] = None
    max_body_bytes: int = 1 << 20
    default_max_new_tokens: int = 256
    model_info: Optional[dict] = None
    ui: bool = True  # the chat page at /chat (and at / for browsers)
    abstain_below: Optional[float] = None  # default confidence threshold of every request (`--abstain-below`)
    # `Host` header names accepted (without port); None accepts any. A server bound to loopback accepts only local
    # names, so that a web page cannot reach it through DNS rebinding
    allowed_hosts: Optional[frozenset] = None

    def threshold(self, requested: Optional[float]) -> Optional[float]:
        return self.abstain_below if requested is None else requested


class APIError(Exception):
    """A request the server refuses; rendered in the TGI or OpenAI error shape depending on the route."""

    def __init__(self, status: int, message: str, kind: str = "validation", param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


OPENAI_TYPES = {"validation": "invalid_request_error", "overloaded": "rate_limit_error",
                "unauthorized": "authentication_error", "generation": "server_error", "internal": "server_error",
                "not_found": "not_found_error"}
# TGI's status codes and message prefixes by error type (router/src/server.rs, infer/mod.rs)
TGI_STATUS = {"validation": 422, "overloaded": 429, "generation": 424, "incomplete_generation": 500}
TGI_PREFIX = {"validation": "Input validation error: ", "generation": "Request failed during generation: "}


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def tgi_message(error: APIError) -> str:
    return TGI_PREFIX.get(error.kind, "") + error.message


def error_response(path: str, error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    if is_openai(path):
        body = {"error": {"message": error.message, "type": OPENAI_TYPES.get(error.kind, error.kind),
                          "param": error.param, "code": error.status}}
        return JSONResponse(body, status_code=error.status, headers=headers)
    status = 424 if error.kind == "generation" else error.status
    return JSONResponse(tgi_error(tgi_message(error), error.kind), status_code=status, headers=headers)


async def read_body(request: Request, limit: int):
    """The parsed JSON body, refused with 415 unless sent as `application/json` (a page on another site can post
    `text/plain` to a local server without the browser asking it first), with 413 over `limit` bytes and with 422
    (TGI) or 400 (OpenAI) if not JSON."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(415, f"Send the body as JSON with the header `Content-Type: application/json` (got "
                            f"{f'`{media_type}`' if media_type else 'no Content-Type'}).")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"Request body is over {limit} bytes; the limit is {limit} bytes.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400 if is_openai(request.url.path) else 422, f"Request body is not valid JSON: {e}") from None


def validate(request: Request, data, schema: type[BaseModel], expected: str = "") -> BaseModel:
    """`data` as `schema`, or an `APIError` that names the first wrong field and what to fix (and, with `expected`,
    which body shape was expected)."""
    openai = is_openai(request.url.path)
    try:
        return schema.model_validate(data)
    except PydanticValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field `{where}`; see the API reference for accepted fields"
            if not openai and where.rpartition(".")[2] in ("tools", "tool_choice", "response_format"):
                message = (f"unknown field `{where}`: TGI's routes take no tools and no `response_format`; use "
                           "`/v1/chat/completions` (or TGI's `grammar` parameter for structured output)")
        message = f"{where}: {message}" + (f" (expected {expected})" if expected else "")
        raise APIError(400 if openai else 422, message, param=where if openai else None) from None


async def read_json(request: Request, schema: type[BaseModel], limit: int) -> BaseModel:
    return validate(request, await read_body(request, limit), schema)


async def off_loop(function, *args):
    """`function(*args)` in a worker thread: tokenizing and templating a long prompt takes the CPU for a while, and
    the event loop must keep answering every other request (and `/health`) meanwhile."""
    return await asyncio.to_thread(function, *args)


def check_prompt_chars(chars: int, engine: Engine, param: str, status: int) -> None:
    """Refuse, before any tokenizing, a text too long to fit the context whatever it tokenizes to."""
    if chars > engine.max_prompt_chars:
        raise APIError(status, f"`{param}` has {chars:,} characters, more than a prompt that fits the model's context "
                               f"of {engine.context_length} tokens can have ({engine.max_prompt_chars:,}); shorten "
                               "it.", param=param)


def check_length(prompt_ids: list[int], max_new_tokens: Optional[int], param: str, new_param: str, status: int,
                 context: int, default_max_new_tokens: int) -> int:
    """`max_new_tokens` to use, after checking that the prompt and the requested tokens fit the context."""
    if not prompt_ids:
        raise APIError(status, f"`{param}` tokenizes to no tokens; send some text.", param=param)
    if len(prompt_ids) >= context:
        raise APIError(status, f"`{param}` has {len(prompt_ids)} tokens but the model's context window is "
                               f"{context} tokens; shorten it (leave room for the tokens to generate).", param=param)
    if max_new_tokens is not None and len(prompt_ids) + max_new_tokens > context:
        raise APIError(status, f"`{param}` tokens + `{new_param}` must be <= {context}. Given: "
                               f"{len(prompt_ids)} `{param}` tokens and {max_new_tokens} `{new_param}`; lower "
                               f"`{new_param}` or shorten the input.", param=new_param)
    return max_new_tokens or min(default_max_new_tokens, context - len(prompt_ids))


class ClientDisconnected(Exception):
    pass


class Dispatcher:
    """Hands each engine step's outputs to their requests on the event loop: one wake-up of the loop per step,
    however many requests are in the batch (the engine's `on_step`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def __call__(self, pairs: list[tuple[Sequence, StepOutput]]):  # the engine's thread
        try:
            self.loop.call_soon_threadsafe(self._distribute, pairs)
        except RuntimeError:  # the event loop is gone (shutdown); nobody is listening
            for seq, _ in pairs:
                seq.cancel()

    @staticmethod
    def _distribute(pairs: list[tuple[Sequence, StepOutput]]):
        for seq, output in pairs:
            seq.owner.receive(output)


class Generation:
    """The event-loop side of one request: submits a `Sequence`, collects the `StepOutput`s the engine reports, and
    wakes a streaming reader per token or a non-streaming one only at the end."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams, metrics: ServerMetrics):
        self.loop = asyncio.get_running_loop()
        self.metrics = metrics
        self.received: list[StepOutput] = []
        self.finished = self.loop.create_future()
        self._wake: Optional[asyncio.Future] = None
        self.seq = Sequence(prompt_ids, params, owner=self)
        self.started = time.perf_counter()
        try:
            engine.submit(self.seq)
        except QueueFullError as e:
            raise APIError(429, str(e), kind="overloaded") from None

    def receive(self, output: StepOutput):
        if not self.received and output.token is not None:
            self.metrics.first_token_latency.observe(time.perf_counter() - self.started)
        self.received.append(output)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if output.finish_reason is not None and not self.finished.done():
            self.finished.set_result(None)

    async def __aiter__(self):
        seen = 0
        try:
            while True:
                while seen == len(self.received):
                    self._wake = self.loop.create_future()
                    await self._wake
                output = self.received[seen]
                seen += 1
                self._check(output)
                if output.finish_reason == "cancelled":
                    return
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            if self.seq.finish_reason is None:  # the client went away (or the handler failed): free the row
                self.seq.cancel()

    async def wait(self) -> Completed:
        await self.finished
        self._check(self.received[-1])
        if self.received[-1].finish_reason == "cancelled":
            raise ClientDisconnected()
        return self.completed

    @staticmethod
    def _check(output: StepOutput):
        if output.finish_reason == "error":
            raise APIError(500, output.error, kind="generation")

    @property
    def outputs(self) -> list[StepOutput]:
        return [o for o in self.received if o.token is not None]

    @property
    def completed(self) -> Completed:
        return Completed(self.seq, self.outputs)

    def cancel(self):
        self.seq.cancel()


async def collect(request: Request, generations: list[Generation]) -> list[Completed]:
    """Run non-streaming generations to the end; cancel them all if the client disconnects first."""

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(asyncio.gather(*(g.wait() for g in generations)))
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()
            raise ClientDisconnected()
        return work.result()
    finally:
        watch.cancel()
        for generation in generations:
            if generation.seq.finish_reason is None:
                generation.cancel()


async def each(outputs):
    """The outputs of a live `Generation` as they come, or of a list already collected (an answer held back until
    its confidence is known)."""
    if hasattr(outputs, "__aiter__"):
        async for output in outputs:
            yield output
    else:
        for output in outputs:
            yield output
