"""Text Generation Inference's routes, as TGI's router answers them: `POST /` (a non-streaming answer is wrapped in a
one-element list, as the Inference API does, and `return_full_text` defaults to true there), `/generate`,
`/generate_stream`, `/tokenize` and `/info`. `POST /generate` also takes the OpenLLM seed's body
(`{"prompt", "max_tokens", ...}`).

As in TGI, once a streaming request's body has parsed, every later refusal (validation, a full queue) arrives as an
error event inside a 200 event stream, and the TGI clients raise it as the matching exception.
"""

import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .api import (
    APIError,
    ClientDisconnected,
    Generation,
    collect,
    each,
    read_body,
    read_json,
    tgi_message,
    validate,
)
from .engine import SamplingParams
from .protocol import Completed, sse, tgi_error, tgi_generate_response, tgi_stream_event, tgi_tokens
from .schemas import (
    MAX_BEST_OF,
    MAX_STOP_SEQUENCES,
    SEED_SHAPE,
    TGI_SHAPE,
    SeedRequest,
    TGIRequest,
    generate_body_schema,
)

ABSTAIN_HEADER = "x-openllm-abstained"  # the message of an abstained non-streaming answer


def add_tgi_routes(app: FastAPI, engine, config, metrics, check_length):
    tokenizer = engine.tokenizer
    context = engine.context_length
    compute_type = str(engine.device.type)

    def sampling_params(body: TGIRequest, prompt_ids: list[int]) -> SamplingParams:
        p = body.parameters
        max_new = check_length(prompt_ids, p.max_new_tokens, "inputs", "max_new_tokens", 422)
        return SamplingParams(
            max_new_tokens=max_new, do_sample=p.sampling, temperature=p.temperature or 1.0, top_k=p.top_k or 0,
            top_p=p.top_p or 1.0, repetition_penalty=p.repetition_penalty or 1.0,
            frequency_penalty=p.frequency_penalty or 0.0, seed=p.seed, stop=p.stop, top_n=p.top_n_tokens or 0,
            prefill_logprobs=p.decoder_input_details)

    def prompt_ids_of(body: TGIRequest) -> list[int]:
        ids = tokenizer(body.inputs)["input_ids"]
        return ids[-body.parameters.truncate:] if body.parameters.truncate else ids

    def full_text_prefix(body: TGIRequest, default: bool) -> str:
        full = body.parameters.return_full_text
        return body.inputs if (default if full is None else full) else ""

    async def generate(request: Request, body: TGIRequest, default_full_text: bool = False) -> tuple[dict, dict]:
        started = time.perf_counter()
        prompt_ids = prompt_ids_of(body)
        params = sampling_params(body, prompt_ids)
        best_of = body.parameters.best_of or 1
        generations = [Generation(engine, prompt_ids, params, metrics)]
        try:
            # best_of: independent samples (each with its own random seed); the best mean log-probability wins
            for _ in range(best_of - 1):
                generations.append(Generation(engine, prompt_ids, SamplingParams(**{**vars(params), "seed": None}),
                                              metrics))
        except APIError:  # a full queue: none of them runs
            for generation in generations:
                generation.cancel()
            raise
        results = await collect(request, generations)
        best = max(results, key=lambda r: r.mean_logprob)
        others = [r for r in results if r is not best] if best_of > 1 else None
        p = body.parameters
        abstain = best.abstention(config.threshold(p.abstain_below))
        response = tgi_generate_response(best, full_text_prefix(body, default_full_text),
                                         details=p.details or p.decoder_input_details,
                                         prefill=p.decoder_input_details, others=others, abstain=abstain)
        headers = timing_headers(started, best.seq, len(best.outputs), body.inputs)
        if abstain:  # also said where a response without `details` has no room for it
            headers[ABSTAIN_HEADER] = abstain
        return response, headers

    def timing_headers(started: float, seq, generated: int, inputs: str) -> dict:
        """TGI's `x-*` response headers: where the time went, in milliseconds (`x-compute-time` in seconds)."""
        now = time.perf_counter()
        admitted = seq.admitted_at or now
        inference = now - admitted
        ms = lambda seconds: str(int(seconds * 1000))
        return {"x-compute-type": compute_type, "x-compute-time": str(now - started),
                "x-compute-characters": str(len(inputs)), "x-total-time": ms(now - started),
                "x-validation-time": ms(seq.submitted_at - started), "x-queue-time": ms(admitted - seq.submitted_at),
                "x-inference-time": ms(inference), "x-time-per-token": ms(inference / max(generated, 1)),
                "x-prompt-tokens": str(len(seq.prompt_ids)), "x-generated-tokens": str(generated)}

    def stream(body: TGIRequest, default_full_text: bool = False) -> StreamingResponse:
        async def events():
            try:
                p = body.parameters
                if (p.best_of or 1) > 1:
                    raise APIError(422, "`best_of` != 1 is not allowed for this endpoint")
                if p.decoder_input_details:
                    raise APIError(422, "`decoder_input_details` == true is not supported when streaming tokens")
                prompt_ids = prompt_ids_of(body)
                generation = Generation(engine, prompt_ids, sampling_params(body, prompt_ids), metrics)
                threshold = config.threshold(p.abstain_below)
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
                    yield sse(tgi_stream_event(generation.seq, index, output, text if done else None, p.details,
                                               done))
            except APIError as e:
                yield sse(tgi_error(tgi_message(e), e.kind))

        headers = {"Cache-Control": "no-cache", "x-compute-type": compute_type,
                   "x-compute-characters": str(len(body.inputs)), "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def answer(request: Request, body: TGIRequest, wrap: bool = False, default_full_text: bool = False):
        try:
            response, headers = await generate(request, body, default_full_text)
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse([response] if wrap else response, headers=headers)

    @app.post("/generate")
    async def generate_route(request: Request):
        """TGI: generate text for `inputs`; `parameters.details` adds tokens, log-probs and the finish reason.
        Also accepts the seed's body `{"prompt", "max_tokens", "temperature", "top_k", "top_p", ...}`."""
        data = await read_body(request, config.max_body_bytes)
        try:
            schema = generate_body_schema(data)
        except ValueError as e:
            raise APIError(422, str(e)) from None
        if schema is SeedRequest:
            return await answer(request, seed_to_tgi(validate(request, data, SeedRequest, f"the seed's shape "
                                                                                          f"{SEED_SHAPE}")))
        return await answer(request, validate(request, data, TGIRequest, f"TGI's shape {TGI_SHAPE}"))

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        """TGI: the same as `/generate`, streamed as server-sent events, one per token."""
        return stream(await read_json(request, TGIRequest, config.max_body_bytes))

    @app.post("/")
    async def compat_generate(request: Request):
        """TGI: `/generate` (answered inside a one-element list), or `/generate_stream` when `"stream": true`.
        `return_full_text` defaults to true here, as TGI does for text-generation models."""
        body = await read_json(request, TGIRequest, config.max_body_bytes)
        if body.stream:
            return stream(body, default_full_text=True)
        return await answer(request, body, wrap=True, default_full_text=True)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """TGI: the tokens of `inputs`, each with its text and character span."""
        body = await read_json(request, TGIRequest, config.max_body_bytes)
        if not getattr(tokenizer, "is_fast", False):
            raise APIError(404, "No fast tokenizer available", kind="tokenizer")
        encoding = tokenizer(body.inputs, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        if body.parameters.truncate:
            ids, offsets = ids[-body.parameters.truncate:], offsets[-body.parameters.truncate:]
        return tgi_tokens(body.inputs, ids, offsets)

    @app.get("/info")
    async def info():
        """TGI: the served model and the server's limits (TGI's `Info`, field for field)."""
        import openllm

        return {"model_id": config.model_name, "model_sha": None, "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": engine.max_batch_size + engine.max_queue_size,
                "max_best_of": MAX_BEST_OF, "max_stop_sequences": MAX_STOP_SEQUENCES,
                "max_input_tokens": context - 1, "max_total_tokens": context, "validation_workers": 1,
                "max_client_batch_size": 1, "router": "openllm", "version": openllm.__version__, "sha": None,
                "docker_label": None}


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

