"""`openllm serve` as users run it: a real server process on 127.0.0.1, driven by the openai client,
huggingface_hub's InferenceClient and raw HTTP: OpenAI routes, batching, limits, errors, authentication, metrics.
The TGI routes are tested field by field in test_tgi_wire.py."""

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from server_process import API_KEY, greedy, http, metric, model_logprobs


def test_model_info_and_models(server):
    client = http(server)
    model_info = client.get("/model-info").json()
    n_params = sum(p.numel() for p in server["model"].parameters())
    assert model_info == {**model_info, "model_id": "tiny", "model_type": "openllm", "num_parameters": n_params,
                          "context_length": 256, "dtype": "float32", "device": "cpu", "chat_template": True}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]


# ---------------------------------------------------------------------------------------------------- OpenAI
def test_openai_completions(server):
    tokenizer = server["tokenizer"]
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY)
    prompt = "serving models"
    prompt_ids = tokenizer(prompt)["input_ids"]
    expected = greedy(server, prompt_ids, 10)
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    choice = out.choices[0]
    assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert out.usage.prompt_tokens == len(prompt_ids) and out.usage.completion_tokens == len(expected)
    reference = model_logprobs(server, prompt_ids, expected)
    assert choice.logprobs.token_logprobs == pytest.approx(reference, abs=1e-4)
    confidences = choice.logprobs.model_extra["token_confidences"]
    assert confidences == pytest.approx([math.exp(lp) for lp in choice.logprobs.token_logprobs], rel=1e-6)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)

    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == choice.text

    stop = choice.text[4:7]
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=stop)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == choice.text[:choice.text.index(stop)]
    streamed = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == cut.choices[0].text


def test_chat_completions_openai_and_hf_clients(server):
    tokenizer = server["tokenizer"]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    expected = tokenizer.decode(greedy(server, prompt_ids, 8), skip_special_tokens=True)

    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=2)
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(prompt_ids)
    for entry in out.choices[0].logprobs.content:
        assert entry.model_extra["confidence"] == pytest.approx(math.exp(entry.logprob), rel=1e-6)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the top token
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 8

    hf = InferenceClient(base_url=server["url"], token=API_KEY)
    out = hf.chat_completion(messages, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == expected
    streamed = hf.chat_completion(messages, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


# ---------------------------------------------------------------------------------------------------- load
def test_concurrent_requests_are_batched_and_match_single_results(server):
    tokenizer = server["tokenizer"]
    prompts = ["hello world", "the lazy dog", "a language model predicts", "batching many", "fun", "quick brown"]
    steps_before = metric(server, "openllm_batch_size_count")
    singles_before = metric(server, "openllm_batch_size_bucket", le="1.0")

    def ask(prompt):
        with http(server) as client:
            return client.post("/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 24,
                                                                                    "details": True}})

    with ThreadPoolExecutor(len(prompts)) as pool:
        responses = list(pool.map(ask, prompts))
    assert [r.status_code for r in responses] == [200] * len(prompts)
    for prompt, response in zip(prompts, responses):
        ids = [t["id"] for t in response.json()["details"]["tokens"]]
        assert ids == greedy(server, tokenizer(prompt)["input_ids"], 24)
    steps = metric(server, "openllm_batch_size_count") - steps_before
    singles = metric(server, "openllm_batch_size_bucket", le="1.0") - singles_before
    # six requests of 24 tokens one at a time would take 6 * 23 decode steps, each with one row
    assert steps < 6 * 23 and singles < steps


def test_full_queue_is_refused_with_429_and_server_survives(server):
    # batch 8 + queue 4: of 24 simultaneous long requests, those beyond the twelfth must be refused
    def ask(i):
        with http(server) as client:
            return client.post("/generate", json={"inputs": f"hello {i}", "parameters": {"max_new_tokens": 240}})

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(ask, range(24)))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429} and codes.count(200) >= 12
    refused = next(r for r in responses if r.status_code == 429).json()
    assert refused["error_type"] == "overloaded" and "--max-queue-size" in refused["error"]
    assert http(server).post("/generate", json={"inputs": "still alive"}).status_code == 200


def test_client_disconnect_cancels_generation(server):
    cancelled_before = metric(server, "openllm_generations_finished_total", reason="cancelled")
    tokens_before = metric(server, "openllm_generated_tokens_total")
    with http(server) as client:
        with client.stream("POST", "/generate_stream",
                           json={"inputs": "hello", "parameters": {"max_new_tokens": 240}}) as response:
            first = next(response.iter_lines())
            assert first.startswith("data:") and json.loads(first[5:])["index"] == 1
    deadline = time.time() + 10
    while metric(server, "openllm_generations_finished_total", reason="cancelled") == cancelled_before:
        assert time.time() < deadline, "the abandoned generation was not cancelled"
        time.sleep(0.05)
    assert metric(server, "openllm_generated_tokens_total") - tokens_before < 240


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("body, status, fragment", [
    ('{"inputs": "hi", ', 422, "not valid JSON"),
    ('{"inputs": "hi", "parameters": {"temprature": 0.5}}', 422, "unknown field `parameters.temprature`"),
    ('{"inputs": "hi", "parameters": {"temperature": -1}}', 422, "parameters.temperature"),
    ('{"inputs": "hi", "parameters": {"top_p": 1.5}}', 422, "parameters.top_p"),
    ('{"inputs": "hi", "parameters": {"max_new_tokens": 1000}}', 422, "must be <= 256"),
    ('{"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}', 422, "parameters.stop"),
    ('{"inputs": "hi", "parameters": {"watermark": true}}', 422, "`watermark` is not supported"),
    ('{"inputs": ""}', 422, "inputs"),
])
def test_tgi_bad_requests(server, body, status, fragment):
    response = http(server).post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()
    assert error["error_type"] == "validation" and fragment in error["error"]


@pytest.mark.parametrize("route, body, fragment, param", [
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 0}', "max_tokens", "max_tokens"),
    ("/v1/completions", '{"prompt": "hi", "temperature": 3}', "temperature", "temperature"),
    ("/v1/completions", '{"prompt": "hi", "n": 2}', "n", "n"),
    ("/v1/chat/completions", '{"messages": []}', "messages", "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "robot", "content": "x"}]}', "role", "messages.0.role"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "tools": [{}]}', "tools", None),
    ("/v1/chat/completions", '[1, 2', "not valid JSON", None),
])
def test_openai_bad_requests(server, route, body, fragment, param):
    response = http(server).post(route, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]
    if param:
        assert error["param"] == param


def test_prompt_longer_than_context_and_body_limit(server):
    client = http(server)
    long_prompt = "hello world " * 300
    response = client.post("/generate", json={"inputs": long_prompt})
    assert response.status_code == 422 and "context window is 256 tokens" in response.json()["error"]
    with pytest.raises(ValidationError, match="context window"):
        InferenceClient(model=server["url"], token=API_KEY).text_generation(long_prompt, max_new_tokens=5)
    response = client.post("/v1/completions", json={"prompt": "x" * 9000})
    assert response.status_code == 413 and "the limit is 8192 bytes" in response.json()["error"]["message"]
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long_prompt}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


def test_api_key_and_metrics(server):
    bare = httpx.Client(base_url=server["url"], timeout=30)
    assert bare.get("/health").status_code == 200
    for method, route in (("POST", "/generate"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
                          ("GET", "/v1/models"), ("GET", "/info")):
        response = bare.request(method, route, json={}, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, route
    assert bare.post("/generate", json={}).json()["error_type"] == "unauthorized"
    assert bare.get("/v1/models").json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong").models.list()

    before = metric(server, "openllm_requests_total", route="/generate", status="200")
    tokens_before = metric(server, "openllm_generated_tokens_total")
    http(server).post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 7}})
    assert metric(server, "openllm_requests_total", route="/generate", status="200") == before + 1
    assert metric(server, "openllm_generated_tokens_total") - tokens_before == 7
    assert metric(server, "openllm_requests_total", route="/generate", status="401") >= 2
    text = http(server).get("/metrics").text
    for name in ("openllm_queue_depth", "openllm_generated_tokens_per_second",
                 "openllm_request_duration_seconds_bucket", "openllm_time_to_first_token_seconds_count"):
        assert name in text
