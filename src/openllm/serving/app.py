"""The HTTP application: TGI routes (`/generate`, `/generate_stream`, `/`, `/info`), OpenAI routes
(`/v1/completions`, `/v1/chat/completions`, `/v1/models`), and `/health`, `/metrics`, `/model-info`.

Every route hands its request to the shared `Engine` and awaits the tokens it reports, so requests from many
clients are generated together in one batch; the event loop never runs the model.
"""

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, QueueFullError, SamplingParams, Sequence, StepOutput, Token
from .metrics import ServerMetrics
from .schemas import ChatCompletionRequest, CompletionRequest, TGIRequest

ROUTES = ("/", "/generate", "/generate_stream", "/info", "/health", "/metrics", "/model-info", "/v1/models",
          "/v1/completions", "/v1/chat/completions")
OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass
class ServerConfig:
    model_name: str
    api_key: Optional[str] = None
    max_body_bytes: int = 1 << 20
    default_max_new_tokens: int = 256
    model_info: Optional[dict] = None


class APIError(Exception):
    """A request the server refuses; rendered in the TGI or OpenAI error shape depending on the route."""

    def __init__(self, status: int, message: str, kind: str = "validation", param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


OPENAI_TYPES = {"validation": "invalid_request_error", "overloaded": "rate_limit_error",
                "unauthorized": "authentication_error", "generation": "server_error", "not_found": "not_found_error"}


def error_response(path: str, error: APIError) -> JSONResponse:
    if path.startswith("/v1/"):
        body = {"error": {"message": error.message, "type": OPENAI_TYPES.get(error.kind, error.kind),
                          "param": error.param, "code": error.status}}
    else:
        body = {"error": error.message, "error_type": error.kind}
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers)


# ---------------------------------------------------------------------------------------------------- requests
async def read_json(request: Request, schema: type[BaseModel], limit: int) -> BaseModel:
    """Read and validate a JSON body, turning every way it can be wrong into an `APIError` that says what to fix."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"Request body is over {limit} bytes; the limit is {limit} bytes.")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        status = 400 if request.url.path.startswith("/v1/") else 422
        raise APIError(status, f"Request body is not valid JSON: {e}") from None
    try:
        return schema.model_validate(data)
    except PydanticValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field `{where}`; see the API reference for accepted fields"
        raise APIError(400 if request.url.path.startswith("/v1/") else 422, f"{where}: {message}",
                       param=where if request.url.path.startswith("/v1/") else None) from None


class Generation:
    """The event-loop side of one request: submits a `Sequence` and yields the `StepOutput`s the engine reports."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams, metrics: ServerMetrics):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        self.metrics = metrics

        def deliver(output: StepOutput):
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, output)
            except RuntimeError:  # the event loop is gone (shutdown); nobody is listening
                self.seq.cancel()

        self.seq = Sequence(prompt_ids, params, deliver)
        self.started = time.perf_counter()
        try:
            engine.submit(self.seq)
        except QueueFullError as e:
            raise APIError(429, str(e), kind="overloaded") from None

    async def __aiter__(self):
        first = True
        try:
            while True:
                output = await self.queue.get()
                if output.finish_reason == "error":
                    raise APIError(500, f"Generation failed: {output.error}", kind="generation")
                if output.finish_reason == "cancelled":
                    return
                if first:
                    self.metrics.first_token_latency.observe(time.perf_counter() - self.started)
                    first = False
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            if self.seq.finish_reason is None:  # the client went away (or the handler failed): free the row
                self.seq.cancel()

    async def collect(self, request: Request) -> list[StepOutput]:
        """All outputs of a non-streaming request; cancels the generation if the client disconnects first."""

        async def gather():
            return [output async for output in self]

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(gather()), asyncio.ensure_future(disconnected())
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            self.seq.cancel()
            work.cancel()
            raise ClientDisconnected()
        watch.cancel()
        return work.result()


class ClientDisconnected(Exception):
    pass


def token_dict(token: Token) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special,
            "confidence": token.confidence}


def sse(payload, prefix: str = "data:") -> str:
    return f"{prefix}{json.dumps(payload, ensure_ascii=False)}\n\n"


class StopHoldback:
    """Streams text for OpenAI routes, which cut the text at a stop sequence: text that could be the start of a
    stop sequence is held back until the following tokens show whether it is one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0

    def push(self, output: StepOutput) -> str:
        self.text += output.text
        if output.stop_index is not None:
            limit = output.stop_index
        elif output.finish_reason is not None:
            limit = len(self.text)
        else:
            hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
            limit = len(self.text) - hold
        delta = self.text[self.sent:max(limit, self.sent)]
        self.sent = max(limit, self.sent)
        return delta


# ---------------------------------------------------------------------------------------------------- app
def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    tokenizer = engine.tokenizer
    metrics = engine.metrics or ServerMetrics()
    engine.metrics = metrics
    metrics.tokens_per_second.set_function(engine.tokens_per_second)
    context = engine.context_length

    async def lifespan(app):
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
        return error_response(request.url.path, APIError(500, f"{type(error).__name__}: {error}", "generation"))

    app.add_middleware(GuardMiddleware, config=config, metrics=metrics)

    def check_length(prompt_ids: list[int], max_new_tokens: Optional[int], param: str, new_param: str, status: int):
        if not prompt_ids:
            raise APIError(status, f"`{param}` tokenizes to no tokens; send some text.", param=param)
        if len(prompt_ids) >= context:
            raise APIError(status, f"`{param}` has {len(prompt_ids)} tokens but the model's context window is "
                                f"{context} tokens; shorten it (leave room for the tokens to generate).", param=param)
        if max_new_tokens is not None and len(prompt_ids) + max_new_tokens > context:
            raise APIError(status, f"`{param}` tokens + `{new_param}` must be <= {context}. Given: {len(prompt_ids)} "
                                f"`{param}` tokens and {max_new_tokens} `{new_param}`; lower `{new_param}` or "
                                "shorten the input.", param=new_param)
        return max_new_tokens or min(config.default_max_new_tokens, context - len(prompt_ids))

    # ------------------------------------------------------------------ TGI
    def tgi_generation(body: TGIRequest) -> Generation:
        p = body.parameters
        prompt_ids = tokenizer(body.inputs)["input_ids"]
        if p.truncate:
            prompt_ids = prompt_ids[-p.truncate:]
        max_new = check_length(prompt_ids, p.max_new_tokens, "inputs", "max_new_tokens", 422)
        # as in TGI, asking for a sampling setting turns sampling on
        sampling = p.do_sample or any(v not in (None, 1.0) for v in (p.temperature, p.top_p)) or bool(p.top_k)
        params = SamplingParams(
            max_new_tokens=max_new, do_sample=sampling, temperature=p.temperature or 1.0, top_k=p.top_k or 0,
            top_p=p.top_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
            frequency_penalty=p.frequency_penalty or 0.0, seed=p.seed, stop=p.stop, top_n=p.top_n_tokens or 0,
            prefill_logprobs=p.details and p.decoder_input_details)
        return Generation(engine, prompt_ids, params, metrics)

    async def tgi_generate(request: Request, body: TGIRequest):
        generation = tgi_generation(body)
        try:
            outputs = await generation.collect(request)
        except ClientDisconnected:
            return Response(status_code=499)
        seq, last = generation.seq, outputs[-1]
        text = (body.inputs if body.parameters.return_full_text else "") + "".join(o.text for o in outputs)
        response = {"generated_text": text}
        if body.parameters.details:
            response["details"] = {
                "finish_reason": last.finish_reason, "generated_tokens": len(outputs),
                "seed": seq.seed if seq.sampling else None, "prefill": [token_dict(t) for t in seq.prefill],
                "tokens": [token_dict(o.token) for o in outputs],
                "top_tokens": [[token_dict(t) for t in o.token.top] for o in outputs] if seq.params.top_n else None,
            }
        return JSONResponse(response)

    def tgi_stream(request: Request, body: TGIRequest):
        generation = tgi_generation(body)
        seq = generation.seq

        async def events():
            text = body.inputs if body.parameters.return_full_text else ""
            try:
                index = 0
                async for output in generation:
                    index += 1
                    text += output.text
                    final = output.finish_reason is not None
                    event = {"index": index, "token": token_dict(output.token),
                             "top_tokens": [token_dict(t) for t in output.token.top] if seq.params.top_n else None,
                             "generated_text": text if final else None, "details": None}
                    if final and body.parameters.details:
                        event["details"] = {"finish_reason": output.finish_reason, "generated_tokens": index,
                                            "seed": seq.seed if seq.sampling else None,
                                            "input_length": len(seq.prompt_ids)}
                    yield sse(event)
            except APIError as e:
                yield sse({"error": e.message, "error_type": e.kind})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/generate")
    async def generate(request: Request):
        """TGI: generate text for `inputs`; `parameters.details` adds tokens, log-probs and the finish reason."""
        return await tgi_generate(request, await read_json(request, TGIRequest, config.max_body_bytes))

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        """TGI: the same as `/generate`, streamed as server-sent events, one per token."""
        return tgi_stream(request, await read_json(request, TGIRequest, config.max_body_bytes))

    @app.post("/")
    async def compat_generate(request: Request):
        """TGI: `/generate`, or `/generate_stream` when the body has `"stream": true` (what TGI clients call)."""
        body = await read_json(request, TGIRequest, config.max_body_bytes)
        return tgi_stream(request, body) if body.stream else await tgi_generate(request, body)

    @app.get("/info")
    async def info():
        """TGI: the served model and the server's limits."""
        import openllm

        model_info = config.model_info or {}
        return {"model_id": config.model_name, "model_sha": None, "model_dtype": model_info.get("dtype"),
                "model_device_type": model_info.get("device"), "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": engine.max_batch_size + engine.max_queue_size, "max_best_of": 1,
                "max_stop_sequences": 4, "max_input_tokens": context - 1, "max_total_tokens": context,
                "max_batch_size": engine.max_batch_size, "max_client_batch_size": 1, "validation_workers": 1,
                "router": "openllm", "version": openllm.__version__, "sha": None, "docker_label": None}

    @app.get("/health")
    async def health():
        if not engine.alive:
            raise APIError(503, "The generation worker is not running.", kind="generation")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model-info")
    async def model_info():
        return {"model_id": config.model_name, **(config.model_info or {}), "context_length": context}

    # ------------------------------------------------------------------ OpenAI
    def openai_params(body, max_tokens: Optional[int], prompt_ids, top_n: int) -> SamplingParams:
        max_new = check_length(prompt_ids, max_tokens, "prompt" if isinstance(body, CompletionRequest)
                               else "messages", "max_tokens", 400)
        temperature = 1.0 if body.temperature is None else body.temperature
        return SamplingParams(
            max_new_tokens=max_new, do_sample=temperature > 0, temperature=temperature or 1.0,
            top_k=body.top_k or 0, top_p=body.top_p or 1.0, repetition_penalty=body.repetition_penalty or 1.0,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
            seed=body.seed, stop=body.stop_list, top_n=top_n)

    def usage(seq: Sequence, completion_tokens: int) -> dict:
        prompt = len(seq.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens}

    def legacy_logprobs(tokens: list[Token], offset: int) -> dict:
        offsets, position = [], offset
        for t in tokens:
            offsets.append(position)
            position += len(t.text)
        return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{a.text: a.logprob for a in t.top} for t in tokens], "text_offset": offsets,
                "token_confidences": [t.confidence for t in tokens]}

    def chat_logprobs(tokens: list[Token], top: bool) -> dict:
        def entry(t: Token, with_top: bool) -> dict:
            item = {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()),
                    "confidence": t.confidence}
            if with_top:
                item["top_logprobs"] = [entry(a, False) for a in t.top]
            return item

        return {"content": [entry(t, True) for t in tokens]}

    def completion_chunk(kind: str, rid: str, created: int, choice: dict, usage_: Optional[dict] = None) -> dict:
        return {"id": rid, "object": kind, "created": created, "model": config.model_name, "choices": [choice],
                **({"usage": usage_} if usage_ is not None else {})}

    async def openai_run(request: Request, body, generation: Generation, chat: bool, prefix: str = ""):
        seq = generation.seq
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        want_logprobs = body.logprobs if chat else body.logprobs is not None
        if not body.stream:
            try:
                outputs = await generation.collect(request)
            except ClientDisconnected:
                return Response(status_code=499)
            holdback = StopHoldback(body.stop_list)
            text = prefix + "".join(holdback.push(o) for o in outputs)
            tokens = [o.token for o in outputs]
            logprobs = None
            if want_logprobs:
                logprobs = chat_logprobs(tokens, True) if chat else legacy_logprobs(tokens, len(prefix))
            choice = {"index": 0, "logprobs": logprobs, "finish_reason": OPENAI_FINISH[outputs[-1].finish_reason]}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return JSONResponse(completion_chunk(kind, rid, created, choice, usage(seq, len(outputs))))

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        kind += ".chunk" if chat else ""

        async def events():
            holdback = StopHoldback(body.stop_list)
            count = 0
            try:
                if chat:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}
                    yield sse(completion_chunk(kind, rid, created, first), "data: ")
                elif prefix:
                    yield sse(completion_chunk(kind, rid, created, {"index": 0, "text": prefix, "logprobs": None,
                                                                    "finish_reason": None}), "data: ")
                async for output in generation:
                    count += 1
                    delta = holdback.push(output)
                    finish = OPENAI_FINISH.get(output.finish_reason) if output.finish_reason else None
                    if not (delta or want_logprobs or finish):
                        continue
                    logprobs = None
                    if want_logprobs:
                        logprobs = (chat_logprobs([output.token], True) if chat
                                    else legacy_logprobs([output.token], len(prefix) + holdback.sent - len(delta)))
                    choice = {"index": 0, "logprobs": logprobs, "finish_reason": finish}
                    if chat:
                        choice["delta"] = {"content": delta} if delta else {}
                    else:
                        choice["text"] = delta
                    yield sse(completion_chunk(kind, rid, created, choice), "data: ")
                if include_usage:
                    yield sse({"id": rid, "object": kind, "created": created, "model": config.model_name,
                               "choices": [], "usage": usage(seq, count)}, "data: ")
            except APIError as e:
                yield sse({"error": {"message": e.message, "type": OPENAI_TYPES[e.kind], "param": None,
                                     "code": e.status}}, "data: ")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        """OpenAI: complete a prompt."""
        body = await read_json(request, CompletionRequest, config.max_body_bytes)
        prompt_ids = tokenizer(body.prompt_text)["input_ids"]
        params = openai_params(body, body.max_tokens, prompt_ids, top_n=body.logprobs or 0)
        generation = Generation(engine, prompt_ids, params, metrics)
        return await openai_run(request, body, generation, chat=False, prefix=body.prompt_text if body.echo else "")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        """OpenAI: answer a conversation, formatted with the tokenizer's chat template."""
        body = await read_json(request, ChatCompletionRequest, config.max_body_bytes)
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "This model's tokenizer has no chat template, so it cannot format `messages`. Use "
                                "/v1/completions, or add a `chat_template` to the tokenizer.", param="messages")
        try:
            prompt = tokenizer.apply_chat_template([m.as_template_message() for m in body.messages],
                                                   add_generation_prompt=True, tokenize=False)
        except Exception as e:  # templates raise on conversations they do not accept (e.g. role order)
            raise APIError(400, f"The chat template rejected `messages`: {e}", param="messages") from None
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = openai_params(body, max_tokens, prompt_ids, top_n=(body.top_logprobs or 0) if body.logprobs else 0)
        generation = Generation(engine, prompt_ids, params, metrics)
        return await openai_run(request, body, generation, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "openllm"}]}

    return app


class GuardMiddleware:
    """Checks the API key (every route but /health) and counts requests by route and status, with their latency
    up to the last byte of the response (so streamed generations count in full)."""

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
            if self.config.api_key and path != "/health" and not self._authorized(scope):
                response = error_response(path, APIError(
                    401, "Missing or wrong API key: send the header `Authorization: Bearer <key>`.", "unauthorized"))
                await response(scope, receive, send_and_record)
                return
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(route=route).observe(time.perf_counter() - started)

    def _authorized(self, scope) -> bool:
        headers = dict(scope["headers"])
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.config.api_key.encode())
