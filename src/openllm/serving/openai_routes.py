"""OpenAI's routes: `/v1/completions`, `/v1/chat/completions` (formatted with the tokenizer's chat template) and
`/v1/models`, streamed or not, with `logprobs`.

Each route reads the engine, settings and metrics from `request.app.state` and hands the work to `OpenAIServing`,
which knows nothing of HTTP but the request it watches for a disconnect."""

import time
import uuid
from typing import AsyncIterator, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..evaluation.confidence import ABSTAIN
from .api import (
    OPENAI_TYPES,
    APIError,
    ClientDisconnected,
    Generation,
    ServerConfig,
    check_length,
    check_prompt_chars,
    collect,
    each,
    off_loop,
    read_json,
)
from .engine import Engine, SamplingParams, Sequence, StepOutput
from .grammar import GrammarError, openai_grammar
from .metrics import ServerMetrics
from .protocol import OPENAI_FINISH, Completed, chat_logprobs, completion_logprobs, confidence_json, sse
from .schemas import ChatCompletionRequest, CompletionRequest
from .tool_calls import ToolCallHoldback, assistant_message, required_grammar, template_tools

OpenAIRequest = Union[CompletionRequest, ChatCompletionRequest]

router = APIRouter()


class StopHoldback:
    """Streams text for OpenAI routes, which cut the text at a stop sequence: text that could be the start of a
    stop sequence is held back until the following tokens show whether it is one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.borders = [_borders(s) for s in self.stops]
        self.matched = [0] * len(self.stops)  # per stop: its longest prefix that the text ends with
        self.text = ""
        self.sent = 0

    def push(self, output: StepOutput) -> str:
        self.text += output.text
        self._advance(output.text)
        if output.stop_index is not None:
            limit = output.stop_index
        elif output.finish_reason is not None:
            limit = len(self.text)
        else:  # hold back the longest proper prefix of a stop sequence that the text ends with
            hold = max((k if k < len(s) else b[k - 1] for s, b, k in zip(self.stops, self.borders, self.matched)),
                       default=0)
            limit = len(self.text) - hold
        delta = self.text[self.sent:max(limit, self.sent)]
        self.sent = max(limit, self.sent)
        return delta

    def _advance(self, new_text: str) -> None:
        # Knuth-Morris-Pratt: work in proportion to the new text, whatever the stop sequences' length (testing every
        # prefix of every stop sequence at each token was quadratic in their length, on the event loop)
        for i, (stop, border) in enumerate(zip(self.stops, self.borders)):
            k = self.matched[i]
            for char in new_text:
                if k == len(stop):
                    k = border[k - 1]
                while k and stop[k] != char:
                    k = border[k - 1]
                k += stop[k] == char
            self.matched[i] = k


def _borders(s: str) -> list[int]:
    """border[i]: the length of the longest proper prefix of s[:i + 1] that is also its suffix."""
    border, k = [0] * len(s), 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = border[k - 1]
        k += s[i] == s[k]
        border[i] = k
    return border


def usage(seq: Sequence, completion_tokens: int) -> dict:
    prompt = len(seq.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens, "prompt_tokens_details": {"cached_tokens": seq.cached_tokens}}


def abstained_choice(done: Completed, message: str, chat: bool, delta: bool, with_logprobs: bool) -> dict:
    """The choice of a withheld answer: finish reason `abstain`, no text, and the reason as `refusal` (chat's own
    field; the same name on completions)."""
    choice = {"index": 0, "logprobs": None, "finish_reason": ABSTAIN}
    if chat and delta:
        choice["delta"] = {"refusal": message}
    elif chat:
        choice["message"] = {"role": "assistant", "content": None, "refusal": message}
    else:
        choice["text"], choice["refusal"] = "", message
    if with_logprobs:
        choice["confidence"] = confidence_json(done.confidence)
    return choice


class OpenAIServing:
    """The OpenAI routes without HTTP: a request body becomes a prompt and sampling parameters, and what the engine
    generates becomes a response object or its server-sent events. `rid` and `created` name one response."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: ServerMetrics):
        self.engine, self.config, self.metrics = engine, config, metrics
        self.tokenizer = engine.tokenizer

    async def prepare(self, body: OpenAIRequest) -> tuple[list[int], SamplingParams]:
        """The prompt's ids and sampling parameters: a text too long for the context is refused at once, and the
        tokenizing and templating run off the event loop."""
        if isinstance(body, CompletionRequest):
            check_prompt_chars(len(body.prompt_text), self.engine, "prompt", 400)
            return await off_loop(self.completion_prompt, body)
        check_prompt_chars(sum(m.num_chars for m in body.messages), self.engine, "messages", 400)
        return await off_loop(self.chat_prompt, body)

    def completion_prompt(self, body: CompletionRequest) -> tuple[list[int], SamplingParams]:
        prompt_ids = self.tokenizer(body.prompt_text)["input_ids"]
        return prompt_ids, self.sampling_params(body, body.max_tokens, prompt_ids, top_n=body.logprobs or 0)

    def chat_prompt(self, body: ChatCompletionRequest) -> tuple[list[int], SamplingParams]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "This model's tokenizer has no chat template, so it cannot format `messages`. Use "
                                "/v1/completions, or add a `chat_template` to the tokenizer.", param="messages")
        tools = template_tools(self.tokenizer, body)
        try:
            prompt = self.tokenizer.apply_chat_template([m.as_template_message() for m in body.messages],
                                                        tools=tools, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # templates raise on conversations they do not accept (e.g. role order)
            raise APIError(400, f"The chat template rejected `messages`: {e}", param="messages") from None
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_tokens = body.max_completion_tokens or body.max_tokens
        top_n = (body.top_logprobs or 0) if body.logprobs else 0
        return prompt_ids, self.sampling_params(body, max_tokens, prompt_ids, top_n=top_n)

    def sampling_params(self, body: OpenAIRequest, max_tokens: Optional[int], prompt_ids: list[int],
                        top_n: int) -> SamplingParams:
        param = "prompt" if isinstance(body, CompletionRequest) else "messages"
        max_new = check_length(prompt_ids, max_tokens, param, "max_tokens", 400, self.engine.context_length,
                               self.config.default_max_new_tokens)
        temperature = 1.0 if body.temperature is None else body.temperature
        return SamplingParams(
            max_new_tokens=max_new, do_sample=temperature > 0, temperature=temperature or 1.0,
            top_k=body.top_k or 0, top_p=body.top_p or 1.0, repetition_penalty=body.repetition_penalty or 1.0,
            frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0,
            seed=body.seed, stop=body.stop_list, top_n=top_n, grammar=self.grammar(body))

    def grammar(self, body: OpenAIRequest) -> Optional[str]:
        """The grammar the answer must follow: tool calls only (a required `tool_choice`), or `response_format`."""
        calls = required_grammar(self.tokenizer, body) if isinstance(body, ChatCompletionRequest) else None
        try:
            if calls is not None:
                return self.engine.grammars.check("lark", calls)
            spec = openai_grammar(body.response_format)
            return None if spec is None else self.engine.grammars.check(*spec)
        except GrammarError as e:
            param = "tools" if calls is not None else "response_format"
            raise APIError(400, f"`{param}`: {e}", param=param) from None

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Generation:
        return Generation(self.engine, prompt_ids, params, self.metrics)

    def chunk(self, kind: str, rid: str, created: int, choice: dict, usage_: Optional[dict] = None) -> dict:
        return {"id": rid, "object": kind, "created": created, "model": self.config.model_name, "choices": [choice],
                **({"usage": usage_} if usage_ is not None else {})}

    def response(self, done: Completed, body: OpenAIRequest, chat: bool, rid: str, created: int,
                 prefix: str = "") -> dict:
        """The whole answer of a non-streaming request (`prefix`: the echoed prompt of a completion)."""
        kind = "chat.completion" if chat else "text_completion"
        want_logprobs = body.logprobs if chat else body.logprobs is not None
        outputs = done.outputs
        if abstain := done.abstention(self.config.threshold(body.abstain_below)):
            choice = abstained_choice(done, abstain, chat, delta=False, with_logprobs=want_logprobs)
            return self.chunk(kind, rid, created, choice, usage(done.seq, len(outputs)))
        holdback = StopHoldback(body.stop_list)
        text = prefix + "".join(holdback.push(o) for o in outputs)
        tokens = [o.token for o in outputs]
        logprobs = None
        if want_logprobs:
            logprobs = chat_logprobs(tokens) if chat else completion_logprobs(tokens, len(prefix))
        choice = {"index": 0, "logprobs": logprobs, "finish_reason": OPENAI_FINISH[outputs[-1].finish_reason]}
        if chat:
            choice["message"], calls = assistant_message(text, body)
            if calls:
                choice["finish_reason"] = "tool_calls"
        else:
            choice["text"] = text
        if want_logprobs:
            choice["confidence"] = confidence_json(done.confidence)
        return self.chunk(kind, rid, created, choice, usage(done.seq, len(outputs)))

    async def events(self, generation: Generation, body: OpenAIRequest, chat: bool, rid: str, created: int,
                     prefix: str = "") -> AsyncIterator[str]:
        """The server-sent events of a streaming request, `data: [DONE]` last."""
        seq = generation.seq
        kind = "chat.completion.chunk" if chat else "text_completion"
        want_logprobs = body.logprobs if chat else body.logprobs is not None
        threshold = self.config.threshold(body.abstain_below)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        holdback = StopHoldback(body.stop_list)
        tools = ToolCallHoldback() if chat and body.tool_mode else None
        count = 0
        try:
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}
                yield sse(self.chunk(kind, rid, created, first), "data: ")
            elif prefix:
                yield sse(self.chunk(kind, rid, created, {"index": 0, "text": prefix, "logprobs": None,
                                                          "finish_reason": None}), "data: ")
            outputs, received = generation, []
            if threshold is not None:  # nothing is sent before the whole answer is known to be kept
                outputs = [output async for output in generation]
                if not outputs:  # cancelled: the client is gone
                    return
                done = Completed(seq, outputs)
                if abstain := done.abstention(threshold):
                    choice = abstained_choice(done, abstain, chat, delta=True, with_logprobs=want_logprobs)
                    yield sse(self.chunk(kind, rid, created, choice), "data: ")
                    if include_usage:
                        yield sse({"id": rid, "object": kind, "created": created, "model": self.config.model_name,
                                   "choices": [], "usage": usage(seq, len(outputs))}, "data: ")
                    yield "data: [DONE]\n\n"
                    return
            async for output in each(outputs):
                count += 1
                received.append(output)
                delta = holdback.push(output)
                finish = OPENAI_FINISH.get(output.finish_reason) if output.finish_reason else None
                calls = None
                if tools is not None:
                    delta = tools.push(delta)
                    if finish:
                        message, has_calls = assistant_message(tools.text, body)
                        if has_calls:
                            calls, finish = message["tool_calls"], "tool_calls"
                        else:
                            delta += tools.rest()
                if not (delta or want_logprobs or finish):
                    continue
                logprobs = None
                if want_logprobs:
                    logprobs = (chat_logprobs([output.token]) if chat else
                                completion_logprobs([output.token], len(prefix) + holdback.sent - len(delta)))
                choice = {"index": 0, "logprobs": logprobs, "finish_reason": finish}
                if calls:
                    choice["delta"] = {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]}
                elif chat:
                    choice["delta"] = {"content": delta} if delta else {}
                else:
                    choice["text"] = delta
                if want_logprobs and finish:
                    choice["confidence"] = confidence_json(Completed(seq, received).confidence)
                yield sse(self.chunk(kind, rid, created, choice), "data: ")
            if include_usage:
                yield sse({"id": rid, "object": kind, "created": created, "model": self.config.model_name,
                           "choices": [], "usage": usage(seq, count)}, "data: ")
        except APIError as e:
            yield sse({"error": {"message": e.message, "type": OPENAI_TYPES.get(e.kind, e.kind), "param": None,
                                 "code": e.status}}, "data: ")
        yield "data: [DONE]\n\n"

    async def respond(self, request: Request, body: OpenAIRequest, generation: Generation, chat: bool,
                      prefix: str = "") -> Response:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            return StreamingResponse(self.events(generation, body, chat, rid, created, prefix),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            (done,) = await collect(request, [generation])
        except ClientDisconnected:
            return Response(status_code=499)
        return JSONResponse(self.response(done, body, chat, rid, created, prefix))

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.config.model_name, "object": "model", "created": 0,
                                            "owned_by": "openllm"}]}


def serving(request: Request) -> OpenAIServing:
    state = request.app.state
    return OpenAIServing(state.engine, state.config, state.metrics)


@router.post("/v1/completions")
async def completions(request: Request):
    """OpenAI: complete a prompt."""
    openai = serving(request)
    body = await read_json(request, CompletionRequest, openai.config.max_body_bytes)
    generation = openai.submit(*await openai.prepare(body))
    return await openai.respond(request, body, generation, chat=False, prefix=body.prompt_text if body.echo else "")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    """OpenAI: answer a conversation, formatted with the tokenizer's chat template."""
    openai = serving(request)
    body = await read_json(request, ChatCompletionRequest, openai.config.max_body_bytes)
    generation = openai.submit(*await openai.prepare(body))
    return await openai.respond(request, body, generation, chat=True)


@router.get("/v1/models")
async def models(request: Request):
    return serving(request).models()
