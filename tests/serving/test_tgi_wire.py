"""TGI's wire format on every TGI route, checked with TGI's own Python clients against a real `openllm serve`:
the legacy `text-generation` client (installed with --no-deps outside the environment, since it pins
huggingface_hub<1.0) and huggingface_hub's InferenceClient, plus the raw bytes for what clients do not look at
(key order, omitted fields, headers, error shapes)."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError as HFValidationError
from server_process import API_KEY, CONTEXT, greedy, http, model_logprobs

TEXT_GENERATION = "text-generation==0.7.0"


@pytest.fixture(scope="session")
def text_generation(tmp_path_factory):
    """The `text_generation` package: from the folder `make install` puts it in, else installed for this run."""
    folder = Path(sys.prefix) / "text-generation-client"
    if not (folder / "text_generation").is_dir():
        folder = tmp_path_factory.mktemp("text-generation-client")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder),
                        TEXT_GENERATION], check=True)
    sys.path.append(str(folder))  # last: it must not shadow anything of the environment's own
    try:
        import text_generation

        yield text_generation
    finally:
        sys.path.remove(str(folder))


def tg_client(text_generation, server):
    return text_generation.Client(server["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


# ---------------------------------------------------------------------------------------------------- text-generation
def test_text_generation_client_generate(text_generation, server):
    tokenizer = server["tokenizer"]
    prompt = "The quick"
    prompt_ids = tokenizer(prompt)["input_ids"]
    client = tg_client(text_generation, server)
    out = client.generate(prompt, max_new_tokens=6, decoder_input_details=True)  # what failed with KeyError: 0
    expected = greedy(server, prompt_ids, 6)
    assert out.generated_text == tokenizer.decode(expected, skip_special_tokens=True)
    assert [t.id for t in out.details.tokens] == expected
    assert out.details.finish_reason.value == ("eos_token" if expected[-1] == tokenizer.eos_token_id else "length")
    assert out.details.generated_tokens == 6 and out.details.seed is None and out.details.best_of_sequences is None
    assert [t.logprob for t in out.details.tokens] == pytest.approx(model_logprobs(server, prompt_ids, expected),
                                                                    abs=1e-4)
    assert [t.id for t in out.details.prefill] == prompt_ids and out.details.prefill[0].logprob is None
    assert out.details.prefill[1].logprob == pytest.approx(
        model_logprobs(server, prompt_ids[:1], prompt_ids[1:2])[0], abs=1e-4)

    sampled = [client.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.5, seed=s) for s in (3, 3, 4)]
    assert sampled[0].generated_text == sampled[1].generated_text != sampled[2].generated_text
    assert sampled[0].details.seed == 3

    best = client.generate(prompt, max_new_tokens=8, do_sample=True, temperature=1.5, best_of=2,
                           return_full_text=True)
    (other,) = best.details.best_of_sequences
    mean = lambda tokens: sum(t.logprob for t in tokens) / len(tokens)
    assert mean(best.details.tokens) >= mean(other.tokens)  # the best of the two samples is the one returned
    assert best.generated_text.startswith(prompt) and other.generated_text.startswith(prompt)
    assert best.details.seed is not None and other.seed is not None and best.details.seed != other.seed


def test_text_generation_client_stream_and_async(text_generation, server):
    client = tg_client(text_generation, server)
    prompt = "hello world"
    full = client.generate(prompt, max_new_tokens=10, top_n_tokens=2)
    events = list(client.generate_stream(prompt, max_new_tokens=10, top_n_tokens=2))
    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == full.generated_text
    assert events[-1].details.generated_tokens == 10
    assert [[a.id for a in e.top_tokens] for e in events] == [[a.id for a in top] for top in full.details.top_tokens]

    async_client = text_generation.AsyncClient(server["url"], headers={"Authorization": f"Bearer {API_KEY}"})
    assert asyncio.run(async_client.generate(prompt, max_new_tokens=10)).generated_text == full.generated_text


def test_text_generation_client_errors(text_generation, server):
    errors = text_generation.errors
    client = tg_client(text_generation, server)
    too_long = "hello world " * 300
    with pytest.raises(errors.ValidationError, match="context window"):
        client.generate(too_long, max_new_tokens=5)
    with pytest.raises(errors.ValidationError, match="must be <= 256"):
        list(client.generate_stream("hello", max_new_tokens=CONTEXT))  # refused inside the event stream, as TGI does
    with pytest.raises(errors.ValidationError, match="watermark"):
        client.generate("hello", watermark=True)


# ---------------------------------------------------------------------------------------------------- InferenceClient
def test_inference_client(server):
    tokenizer = server["tokenizer"]
    client = InferenceClient(model=server["url"], token=API_KEY)
    prompt = "a language model"
    continuation = tokenizer.decode(greedy(server, tokenizer(prompt)["input_ids"], 12), skip_special_tokens=True)
    # InferenceClient posts to `/`, where TGI prepends the prompt unless told otherwise
    assert client.text_generation(prompt, max_new_tokens=12) == prompt + continuation
    out = client.text_generation(prompt, max_new_tokens=12, details=True, return_full_text=False)
    assert out.generated_text == continuation and out.details.generated_tokens == 12
    events = list(client.text_generation(prompt, max_new_tokens=12, details=True, stream=True,
                                         return_full_text=False))
    assert [e.token.id for e in events] == [t.id for t in out.details.tokens]
    assert events[-1].generated_text == continuation
    assert events[-1].details.input_length == len(tokenizer(prompt)["input_ids"])
    assert "".join(client.text_generation(prompt, max_new_tokens=12, stream=True)) == continuation

    text = client.text_generation(prompt, max_new_tokens=20, return_full_text=False)
    stop = text[6:9]
    cut = client.text_generation(prompt, max_new_tokens=20, stop=[stop], details=True, return_full_text=False)
    assert cut.details.finish_reason == "stop_sequence"
    assert text.startswith(cut.generated_text) and stop in cut.generated_text and len(cut.generated_text) < len(text)
    with pytest.raises(HFValidationError, match="decoder_input_details"):
        list(client.text_generation(prompt, max_new_tokens=3, details=True, decoder_input_details=True, stream=True))


# ---------------------------------------------------------------------------------------------------- bytes
def test_generate_bytes_and_headers(server):
    client = http(server)
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 3, "details": True, "decoder_input_details": True}}
    compat = client.post("/", json=body)
    direct = client.post("/generate", json=body)
    assert compat.text.startswith('[{"generated_text":"hello') and compat.text.endswith("}]")  # full text on `/`
    assert json.loads(compat.text)[0]["details"]["tokens"] == direct.json()["details"]["tokens"]
    response = direct.json()
    assert list(response) == ["generated_text", "details"]
    # TGI's keys in TGI's order, then the one extension (the sequence's confidence), which TGI clients skip
    assert list(response["details"]) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens",
                                         "confidence"]
    assert list(response["details"]["prefill"][0]) == ["id", "text", "logprob"]
    assert list(response["details"]["tokens"][0]) == ["id", "text", "logprob", "special"]
    assert direct.text.startswith('{"generated_text":') and ", " not in direct.text.replace(response[
        "generated_text"], "")  # compact, as serde_json writes it
    headers = direct.headers
    assert headers["x-generated-tokens"] == "3" and headers["x-prompt-tokens"] == str(len(response["details"][
        "prefill"]))
    assert headers["x-compute-type"] == "cpu" and int(headers["x-inference-time"]) >= 0
    assert list(client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}).json()) == [
        "generated_text"]


def test_stream_bytes(server):
    client = http(server)
    with client.stream("POST", "/generate_stream",
                       json={"inputs": "hello", "parameters": {"max_new_tokens": 3, "details": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = raw.split("\n\n")
    assert events[-1] == "" and all(e.startswith('data:{"index":') for e in events[:-1])
    last = json.loads(events[-2][5:])
    assert list(last) == ["index", "token", "generated_text", "details"]  # no top_tokens unless asked
    assert list(last["details"]) == ["finish_reason", "generated_tokens", "seed", "input_length", "confidence"]
    # a request refused after its body parsed: one error event in a 200 stream
    refused = client.post("/generate_stream", json={"inputs": "hello", "parameters": {"max_new_tokens": 999}})
    assert refused.status_code == 200
    assert json.loads(refused.text.removeprefix("data:")) == {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 256. Given: 1 `inputs` "
                 "tokens and 999 `max_new_tokens`; lower `max_new_tokens` or shorten the input.",
        "error_type": "validation"}
    unparsable = client.post("/generate_stream", content=b"{", headers={"Content-Type": "application/json"})
    assert unparsable.status_code == 422  # refused at once


def test_info_health_tokenize(server):
    client = http(server)
    info = client.get("/info").json()
    assert list(info) == ["model_id", "model_sha", "model_pipeline_tag", "max_concurrent_requests", "max_best_of",
                          "max_stop_sequences", "max_input_tokens", "max_total_tokens", "validation_workers",
                          "max_client_batch_size", "router", "version", "sha", "docker_label"]
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == CONTEXT and info["max_concurrent_requests"] == 12
    health = httpx.get(server["url"] + "/health")
    assert health.status_code == 200 and health.content == b""
    text = "hello world, serving"
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == server["tokenizer"](text)["input_ids"]
    assert "".join(t["text"] for t in tokens) == text
    assert all(t["text"] == text[t["start"]:t["stop"]] for t in tokens) and list(tokens[0]) == [
        "id", "text", "start", "stop"]
