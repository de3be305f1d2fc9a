"""Each protocol's router and its serving class on their own: the logic behind the TGI and OpenAI routes runs on a
real engine without HTTP, and an app that includes one router serves that protocol and nothing else."""

import asyncio
import random
import time

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tiny_model import make_tiny_model

from openllm.serving import openai_routes, server_routes, tgi_routes
from openllm.serving.api import APIError, Dispatcher, ServerConfig
from openllm.serving.app import init_app_state, lifespan
from openllm.serving.engine import Engine, StepOutput
from openllm.serving.metrics import ServerMetrics
from openllm.serving.openai_routes import OpenAIServing, StopHoldback
from openllm.serving.schemas import ChatCompletionRequest, CompletionRequest, TGIRequest
from openllm.serving.tgi_routes import TGIServing

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-routers"))


@pytest.fixture
def engine(tiny):
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_batch_size=4, metrics=ServerMetrics()).start()
    yield engine
    engine.stop()


def greedy_ids(tiny, prompt_ids: list[int], n: int) -> list[int]:
    model, _ = tiny
    return model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)[0, len(prompt_ids):].tolist()


def test_tgi_serving_without_http(tiny, engine):
    _, tokenizer = tiny
    tgi = TGIServing(engine, ServerConfig(model_name="tiny"), engine.metrics)
    body = TGIRequest(inputs=PROMPT, parameters={"max_new_tokens": 8, "details": True})

    async def generate():
        engine.on_step = Dispatcher(asyncio.get_running_loop())
        started = time.perf_counter()
        results = [await generation.wait() for generation in tgi.submit(body, *await tgi.prepare(body))]
        return tgi.response(results, body, started)

    response, headers = asyncio.run(generate())
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    expected = greedy_ids(tiny, prompt_ids, 8)
    assert [t["id"] for t in response["details"]["tokens"]] == expected
    assert response["generated_text"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert headers["x-prompt-tokens"] == str(len(prompt_ids)) and headers["x-generated-tokens"] == str(len(expected))

    tokens = tgi.tokenize(TGIRequest(inputs=PROMPT, parameters={"truncate": 2}))
    assert [t["id"] for t in tokens] == prompt_ids[-2:] and PROMPT.endswith(tokens[-1]["text"])
    assert tgi.info()["max_total_tokens"] == engine.context_length == 256


def test_openai_serving_without_http(tiny, engine):
    _, tokenizer = tiny
    openai = OpenAIServing(engine, ServerConfig(model_name="tiny", default_max_new_tokens=5), engine.metrics)
    messages = [{"role": "user", "content": "hello world"}]
    prompt_ids, params = openai.chat_prompt(ChatCompletionRequest(model="tiny", messages=messages, temperature=0))
    assert prompt_ids == tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                                   add_special_tokens=False)["input_ids"]
    assert params.max_new_tokens == 5 and not params.do_sample
    with pytest.raises(APIError, match="`max_tokens` must be <= 256") as error:
        openai.completion_prompt(CompletionRequest(model="tiny", prompt=PROMPT, max_tokens=300))
    assert error.value.status == 400 and error.value.param == "max_tokens"

    body = CompletionRequest(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1)

    async def complete():
        engine.on_step = Dispatcher(asyncio.get_running_loop())
        done = await openai.submit(*openai.completion_prompt(body)).wait()
        return openai.response(done, body, chat=False, rid="cmpl-1", created=0)

    response = asyncio.run(complete())
    expected = greedy_ids(tiny, tokenizer(PROMPT)["input_ids"], 6)
    (choice,) = response["choices"]
    assert choice["text"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert response["id"] == "cmpl-1" and response["usage"]["completion_tokens"] == len(expected)
    assert len(choice["logprobs"]["tokens"]) == len(expected)


def test_stop_holdback_keeps_a_possible_stop_back():
    holdback = StopHoldback(["END"])
    out = lambda text, finish=None, stop=None: StepOutput(token=None, text=text, finish_reason=finish, stop_index=stop)
    assert holdback.push(out("hello E")) == "hello "
    assert holdback.push(out("x")) == "Ex"
    assert holdback.push(out(" EN")) == " "
    assert holdback.push(out("D", "stop_sequence", stop=len("hello Ex "))) == ""


def test_stop_holdback_holds_the_longest_prefix_that_the_text_ends_with():
    """Against the definition (every prefix of every stop sequence tested against the text's end), on random texts
    over a small alphabet, where prefixes overlap often; a long stop sequence costs work in proportion to the text."""
    rng = random.Random(0)
    for _ in range(300):
        stops = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        holdback, text, sent = StopHoldback(stops), "", ""
        for _ in range(rng.randint(1, 8)):
            chunk = "".join(rng.choice("abc") for _ in range(rng.randint(0, 3)))
            text += chunk
            sent += holdback.push(StepOutput(token=None, text=chunk))
            hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            assert sent == text[:max(len(text) - hold, len(sent))], (stops, text, sent)
    huge = StopHoldback(["x" * 200_000])
    assert [huge.push(StepOutput(token=None, text=t)) for t in ("ab", "xx", "c")] == ["ab", "", "xxc"]


def test_one_protocol_router_alone(tiny):
    """An app with the OpenAI router and nothing else: the OpenAI routes answer, the TGI ones do not exist."""
    model, tokenizer = tiny
    app = FastAPI(lifespan=lifespan)
    init_app_state(app, Engine(model, tokenizer, max_batch_size=4), ServerConfig(model_name="tiny"))
    app.include_router(openai_routes.router)
    with TestClient(app) as client:
        out = client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 6,
                                                   "temperature": 0})
        assert out.status_code == 200
        expected = greedy_ids(tiny, tokenizer(PROMPT)["input_ids"], 6)
        assert out.json()["choices"][0]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        assert client.post("/generate", json={"inputs": PROMPT}).status_code == 404
        assert client.get("/health").status_code == 404
    assert not app.state.engine.alive  # the lifespan stopped it

    app = FastAPI(lifespan=lifespan)
    init_app_state(app, Engine(model, tokenizer, max_batch_size=4), ServerConfig(model_name="tiny"))
    app.include_router(tgi_routes.router)
    app.include_router(server_routes.router)
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}).json() == {
            "generated_text": tokenizer.decode(expected, skip_special_tokens=True)}
        assert client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT}).status_code == 404


def test_failures_tell_the_client_nothing_internal(tiny, caplog):
    """An unexpected exception in a route, and a batch that fails inside the engine: the client gets a 500 that says
    where to look; the exception's text (here a path) reaches only the server's log."""
    from openllm.serving.app import create_app

    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_batch_size=4)
    app = create_app(engine, ServerConfig(model_name="tiny"))
    with TestClient(app, raise_server_exceptions=False) as client:
        def broken_step(new):
            raise RuntimeError("weights at /srv/secret/model.safetensors are corrupt")

        engine._step = broken_step
        out = client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 4})
        assert out.status_code == 500 and "secret" not in out.text
        assert "Generation failed; the server's log has the details." in out.text

        def broken_submit(*args, **kwargs):
            raise KeyError("/srv/secret/config")

        engine.submit = broken_submit
        out = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4}})
        assert out.status_code == 500 and "secret" not in out.text
        assert "Internal server error; the server's log has the details." in out.text
    assert "/srv/secret/model.safetensors" in caplog.text and "/srv/secret/config" in caplog.text
