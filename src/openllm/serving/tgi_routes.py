"""Text Generation Inference's routes, as TGI's router answers them: `POST /` (a non-streaming answer is wrapped in a
one-element list, as the Inference API does, and `return_full_text` defaults to true there), `/generate`,
`/generate_stream`, `/tokenize` and `/info`. `POST /generate` also takes the OpenLLM seed's body
(`{"prompt", "max_tokens", ...}`).

As in TGI, once a streaming request's body has parsed, every later refusal (validation, a full queue) arrives as an
error event inside a 200 event stream, and the TGI clients raise it as the matching exception.

Each route reads the engine, settings and metrics from `request.app.state` and hands the work to `TGIServing`, which
knows nothing of HTTP but the request it watches for a disconnect.
"""

import time
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..versions import __version__
from .api import (
    APIError,
    ClientDisconnected,
    Generation,
    ServerConfig,
    check_length,
    check_prompt_chars,
    collect,
    each,
    off_loop,
    read_body,
    read_json,
    tgi_message,
    validate,
)
from .engine import Engine, SamplingParams
from .grammar import GrammarError
from .metrics import ServerMetrics
from .protocol import Completed, sse, tgi_error, tgi_generate_response, tgi_stream_event, tgi_tokens
from .schemas import (
    MAX_BEST_OF,
    MAX_STOP_SEQUENCES,
    SEED_SHAPE,
    TGI_SHAPE,
    SeedRequest,
    TGIGrammar,
    TGIRequest,
    generate_body_schema,
)

ABSTAIN_HEADER = "x-openllm-abstained"  # the message of an abstained non-streaming answer

router = APIRouter()


class TGIServing:
    """The TGI routes without HTTP: a request body becomes generations on the engine, and what they generate becomes
    TGI's response with its `x-*` headers, or its server-sent events."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: ServerMetrics):
        self.engine, self.config, self.metrics = engine, config, metrics
        self.tokenizer = engine.tokenizer
        self.compute_type = str(engine.device.type)

    def prompt_ids(self, body: TGIRequest) -> list[int]:
        ids = self.tokenizer(body.inputs)["input_ids"]
        return ids[-body.parameters.truncate:] if body.parameters.truncate else ids

    async def prepare(self, body: TGIRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's ids and sampling parameters: a text too long for the context is refused at once (unless
        truncated, as TGI does, in which case it is capped at the body limit only), and the tokenizing and grammar
        compiling run off the event loop."""
        if not body.parameters.truncate:
            check_prompt_chars(len(body.inputs), self.engine, "inputs", 422)
        return await off_loop(self.prompt, body)

    def prompt(self, body: TGIRequest) -> tuple[list[int], SamplingParams]:
        prompt_ids = self.prompt_ids(body)
        return prompt_ids, self.sampling_params(body, prompt_ids)

    def sampling_params(self, body: TGIRequest, prompt_ids: list[int]) -> SamplingParams:
        p = body.parameters
        max_new = check_length(prompt_ids, p.max_new_tokens, "inputs", "max_new_tokens", 422,
                               self.engine.context_length, self.config.default_max_new_tokens)
        return SamplingParams(
            max_new_tokens=max_new, do_sample=p.sampling, temperature=p.temperature or 1.0, top_k=p.top_k or 0,
            top_p=p.top_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
            frequency_penalty=p.frequency_penalty or 0.0, seed=p.seed, stop=p.stop, top_n=p.top_n_tokens or 0,
            prefill_logprobs=p.decoder_input_details, grammar=self.grammar(p.grammar))

    def grammar(self, grammar: Optional[TGIGrammar]) -> Optional[str]:
        try:
            return None if grammar is None else self.engine.grammars.check(*grammar.spec)
        except GrammarError as e:
            raise APIError(422, f"`grammar`: {e}") from None

    def submit(self, body: TGIRequest, prompt_ids: list[int], params: SamplingParams) -> list[Generation]:
        """The generations of a non-streaming request: one, or `best_of` independent samples (each with its own
        random seed), of which the best mean log-probability wins."""
        generations = [Generation(self.engine, prompt_ids, params, self.metrics)]
        try:
            for _ in range((body.parameters.best_of or 1) - 1):
                generations.append(Generation(self.engine, prompt_ids,
                                              SamplingParams(**{**vars(params), "seed": None}), self.metrics))
        except APIError:  # a full queue: none of them runs
            for generation in generations:
                generation.cancel()
            raise
        return generations

    def response(self, results: list[Completed], body: TGIRequest, started: float,
                 default_full_text: bool = False) -> tuple[dict, dict]:
        """TGI's `GenerateResponse` of finished `results` and its headers (`started`: when the request came)."""
        best = max(results, key=lambda r: r.mean_logprob)
        others = [r for r in results if r is not best] if (body.parameters.best_of or 1) > 1 else None
        p = body.parameters
        abstain = best.abstention(self.config.threshold(p.abstain_below))
        response = tgi_generate_response(best, full_text_prefix(body, default_full_text),
                                         details=p.details or p.decoder_input_details,
                                         prefill=p.decoder_input_details, others=others, abstain=abstain)
        headers = self.timing_headers(started, best.seq, len(best.outputs), body.inputs)
        if abstain:  # also said where a response without `details` has no room for it
            headers[ABSTAIN_HEADER] = abstain
        return response, headers

    async def generate(self, request: Request, body: TGIRequest, default_full_text: bool = False) -> tuple[dict, dict]:
        started = time.perf_counter()
        results = await collect(request, self.submit(body, *await self.prepare(body)))
        return self.response(results, body, started, default_full_text)

    def timing_headers(self, started: float, seq, generated: int, inputs: str) -> dict:
        """TGI's `x-*` response headers: where the time went, in milliseconds (`x-compute-time` in seconds)."""
        now = time.perf_counter()
        admitted = seq.admitted_at or now
        inference = now - admitted
        ms = lambda seconds: str(int(seconds * 1000))
        return {"x-compute-type": self.compute_type, "x-compute-time": str(now - started),
                "x-compute-characters": str(len(inputs)), "x-total-time": ms(now - started),
                "x-validation-time": ms(seq.submitted_at - started), "x-queue-time": ms(admitted - seq.submitted_at),
                "x-inference-time": ms(inference), "x-time-per-token": ms(inference / max(generated, 1)),
                "x-prompt-tokens": str(len(seq.prompt_ids)), "x-generated-tokens": str(generated)}

    async def events(self, body: TGIRequest, default_full_text: bool = False) -> AsyncIterator[str]:
        """The server-sent events of `/generate_stream`: one per token, or one error event."""
        try:
            p = body.parameters
            if (p.best_of or 1) > 1:
                raise APIError(422, "`best_of` != 1 is not allowed for this endpoint")
            if p.decoder_input_details:
                raise APIError(422, "`decoder_input_details` == true is not supported when streaming tokens")
            generation = Generation(self.engine, *await self.prepare(body), self.metrics)
            threshold = self.config.threshold(p.abstain_below)
            outputs = generation
            if threshold is not None:  # nothing is sent before the whole answer is known to be kept
                outputs = [output async for output in generation]
                if not outputs:  # cancelled: the client is gone
                    return
                done = Completed(generation.seq, outputs)
                if abstain := done.abstention(threshold):
                    yield sse(tgi_stream_event(generation.seq, len(outputs), outputs[-1], "", p.details, done,
                                               abstain))
                    return
            text, index, received = full_text_prefix(body, default_full_text), 0, []
            async for output in each(outputs):
                index += 1
                text += output.text
                received.append(output)
                done = Completed(generation.seq, received) if output.finish_reason is not None else None
                yield sse(tgi_stream_event(generation.seq, index, output, text if done else None, p.details, done))
        except APIError as e:
            yield sse(tgi_error(tgi_message(e), e.kind))

    def stream(self, body: TGIRequest, default_full_text: bool = False) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "x-compute-type": self.compute_type,
                   "x-compute-characters": str(len(body.inputs)), "X-Accel-Buffering": "no"}
        return StreamingResponse(self.events(body, default_full_text), media_type="text/event-stream",
                                 headers=headers)

    async def answer(self, request: Request, body: TGIRequest, wrap: bool = False, default_full_text: bool = False):
        try:
            response, headers = await self.generate(request, body, default_full_text)
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse([response] if wrap else response, headers=headers)

    def tokenize(self, body: TGIRequest) -> list[dict]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise APIError(404, "No fast tokenizer available", kind="tokenizer")
        encoding = self.tokenizer(body.inputs, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        if body.parameters.truncate:
            ids, offsets = ids[-body.parameters.truncate:], offsets[-body.parameters.truncate:]
        return tgi_tokens(body.inputs, ids, offsets)

    def info(self) -> dict:
        context = self.engine.context_length
        return {"model_id": self.config.model_name, "model_sha": None, "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": self.engine.max_batch_size + self.engine.max_queue_size,
                "max_best_of": MAX_BEST_OF, "max_stop_sequences": MAX_STOP_SEQUENCES,
                "max_input_tokens": context - 1, "max_total_tokens": context, "validation_workers": 1,
                "max_client_batch_size": 1, "router": "openllm", "version": __version__, "sha": None,
                "docker_label": None}


def full_text_prefix(body: TGIRequest, default: bool) -> str:
    full = body.parameters.return_full_text
    return body.inputs if (default if full is None else full) else ""


def serving(request: Request) -> TGIServing:
    state = request.app.state
    return TGIServing(state.engine, state.config, state.metrics)


@router.post("/generate")
async def generate_route(request: Request):
    """TGI: generate text for `inputs`; `parameters.details` adds tokens, log-probs and the finish reason.
    Also accepts the seed's body `{"prompt", "max_tokens", "temperature", "top_k", "top_p", ...}`."""
    tgi = serving(request)
    data = await read_body(request, tgi.config.max_body_bytes)
    try:
        schema = generate_body_schema(data)
    except ValueError as e:
        raise APIError(422, str(e)) from None
    if schema is SeedRequest:
        return await tgi.answer(request, seed_to_tgi(validate(request, data, SeedRequest,
                                                              f"the seed's shape {SEED_SHAPE}")))
    return await tgi.answer(request, validate(request, data, TGIRequest, f"TGI's shape {TGI_SHAPE}"))


@router.post("/generate_stream")
async def generate_stream(request: Request):
    """TGI: the same as `/generate`, streamed as server-sent events, one per token."""
    tgi = serving(request)
    return tgi.stream(await read_json(request, TGIRequest, tgi.config.max_body_bytes))


@router.post("/")
async def compat_generate(request: Request):
    """TGI: `/generate` (answered inside a one-element list), or `/generate_stream` when `"stream": true`.
    `return_full_text` defaults to true here, as TGI does for text-generation models."""
    tgi = serving(request)
    body = await read_json(request, TGIRequest, tgi.config.max_body_bytes)
    if body.stream:
        return tgi.stream(body, default_full_text=True)
    return await tgi.answer(request, body, wrap=True, default_full_text=True)


@router.post("/tokenize")
async def tokenize(request: Request):
    """TGI: the tokens of `inputs`, each with its text and character span."""
    tgi = serving(request)
    body = await read_json(request, TGIRequest, tgi.config.max_body_bytes)
    check_prompt_chars(len(body.inputs), tgi.engine, "inputs", 422)
    return await off_loop(tgi.tokenize, body)


@router.get("/info")
async def info(request: Request):
    """TGI: the served model and the server's limits (TGI's `Info`, field for field)."""
    return serving(request).info()


def seed_to_tgi(body: SeedRequest) -> TGIRequest:
    """The seed's body as the TGI request it means: temperature 0 is greedy, top_k 0 and top_p 1 turn those off."""
    sampling = body.temperature > 0
    parameters = {"max_new_tokens": body.max_tokens, "do_sample": sampling, "stop": body.stop_list,
                  "seed": body.seed if sampling else None}
    if sampling:
        parameters.update(temperature=body.temperature, top_k=body.top_k or None,
                          top_p=body.top_p if body.top_p < 1 else None)
    if body.repetition_penalty != 1.0:
        parameters["repetition_penalty"] = body.repetition_penalty
    if body.abstain_below is not None:
        parameters["abstain_below"] = body.abstain_below
    return TGIRequest(inputs=body.prompt, parameters=parameters)

