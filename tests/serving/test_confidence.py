"""Per-sequence confidence and abstention on both protocols, from a real server and real clients: the numbers equal
`openllm.evaluation.confidence` on the same tokens (teacher-forced), abstention happens exactly below the threshold,
streamed or not, and a calibrated model's temperature is what the server reports log-probabilities under."""

import json
import math
import os
import subprocess
import sys

import httpx
import openai
import pytest
import torch
from huggingface_hub import InferenceClient
from server_process import API_KEY, SRC, greedy, http, serve
from tiny_model import make_tiny_model

from openllm.evaluation.confidence import abstain_message, sequence_confidence, token_logprobs_and_entropies

PROMPT = "The quick"
CHAT = [{"role": "user", "content": "hello world"}]


def library_confidence(model, prompt_ids: list[int], generated: list[int]):
    """The reference: one teacher-forced forward pass over prompt + answer, scored by the library."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + generated])).logits[0]
    logprobs, entropies = token_logprobs_and_entropies(logits[len(prompt_ids) - 1:-1], torch.tensor(generated))
    return sequence_confidence(logprobs.tolist(), entropies.tolist())


def assert_matches(reported: dict, reference):
    assert reported["confidence"] == pytest.approx(reference.confidence, rel=1e-5)
    assert reported["mean_logprob"] == pytest.approx(reference.mean_logprob, abs=1e-5)
    assert reported["min_logprob"] == pytest.approx(reference.min_logprob, abs=1e-5)
    assert reported["mean_entropy"] == pytest.approx(reference.mean_entropy, abs=1e-5)
    assert reported["confidence"] == math.exp(reported["mean_logprob"])


def above(x: float) -> float:
    return math.nextafter(x, 1.0)  # the smallest threshold that is more than the confidence


def tgi(client: httpx.Client, threshold=None, details=True, stream=False, max_new_tokens=8):
    parameters = {"max_new_tokens": max_new_tokens, "details": details}
    if threshold is not None:
        parameters["abstain_below"] = threshold
    body = {"inputs": PROMPT, "parameters": parameters}
    if not stream:
        return client.post("/generate", json=body)
    text = client.post("/generate_stream", json=body).text
    return [json.loads(event.removeprefix("data:")) for event in text.split("\n\n") if event]


# ---------------------------------------------------------------------------------------------------- TGI
def test_tgi_confidence_and_abstention(server):
    client, tokenizer, model = http(server), server["tokenizer"], server["model"]
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    expected = greedy(server, prompt_ids, 8)
    response = tgi(client)
    kept = response.json()
    details = kept["details"]
    assert [t["id"] for t in details["tokens"]] == expected
    assert_matches(details["confidence"], library_confidence(model, prompt_ids, expected))
    confidence = details["confidence"]["confidence"]
    assert 0 < confidence < 1 and "x-openllm-abstained" not in response.headers

    at = tgi(client, threshold=confidence)  # not below the threshold: answered
    assert at.json() == kept and "x-openllm-abstained" not in at.headers

    message = abstain_message(confidence, above(confidence))
    withheld = tgi(client, threshold=above(confidence))
    assert withheld.status_code == 200 and withheld.headers["x-openllm-abstained"] == message
    body = withheld.json()
    assert body["generated_text"] == ""
    assert body["details"]["finish_reason"] == "abstain" and body["details"]["message"] == message
    assert body["details"]["confidence"] == details["confidence"]
    assert list(body["details"]) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens", "confidence",
                                     "message"]
    plain = tgi(client, threshold=above(confidence), details=False)  # no details: empty text, the reason in a header
    assert plain.json() == {"generated_text": ""} and plain.headers["x-openllm-abstained"] == message

    # the seed's body on /generate takes the same field
    seed = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                          "abstain_below": above(confidence)})
    assert seed.json() == {"generated_text": ""} and seed.headers["x-openllm-abstained"] == message
    seed = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                          "abstain_below": confidence})
    assert seed.json() == {"generated_text": kept["generated_text"]}


def test_tgi_stream_abstention_sends_only_the_final_event(server):
    client = http(server)
    kept = tgi(client).json()
    confidence = kept["details"]["confidence"]["confidence"]
    plain = tgi(client, stream=True)
    assert plain[-1]["details"]["confidence"] == kept["details"]["confidence"]
    assert "".join(e["token"]["text"] for e in plain) == plain[-1]["generated_text"] == kept["generated_text"]

    assert tgi(client, threshold=confidence, stream=True) == plain  # at the threshold: every token, as without it
    (only,) = tgi(client, threshold=above(confidence), stream=True)
    assert only["generated_text"] == "" and only["token"]["text"] == "" and only["index"] == len(plain)
    assert only["details"]["finish_reason"] == "abstain"
    assert only["details"]["message"] == abstain_message(confidence, above(confidence))
    (bare,) = tgi(client, threshold=above(confidence), stream=True, details=False)
    assert bare["generated_text"] == "" and bare["details"] is None


# ---------------------------------------------------------------------------------------------------- OpenAI
def test_openai_chat_confidence_and_abstention(server):
    tokenizer, model = server["tokenizer"], server["model"]
    prompt_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    expected = greedy(server, prompt_ids, 8)
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY)
    ask = lambda **kw: client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, temperature=0, **kw)

    kept = ask(logprobs=True).choices[0]
    reported = kept.model_extra["confidence"]
    assert_matches(reported, library_confidence(model, prompt_ids, expected))
    assert "confidence" not in ask().choices[0].model_extra  # only with `logprobs`
    confidence = reported["confidence"]

    at = ask(logprobs=True, extra_body={"abstain_below": confidence}).choices[0]
    assert at.message.content == kept.message.content and at.finish_reason == kept.finish_reason
    withheld = ask(logprobs=True, extra_body={"abstain_below": above(confidence)}).choices[0]
    assert withheld.finish_reason == "abstain" and withheld.message.content is None
    assert withheld.message.refusal == abstain_message(confidence, above(confidence))
    assert withheld.model_extra["confidence"] == reported

    streamed = list(ask(stream=True, logprobs=True, extra_body={"abstain_below": confidence}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == kept.message.content
    assert streamed[-1].choices[0].model_extra["confidence"] == pytest.approx(reported, rel=1e-12)
    role, only = ask(stream=True, extra_body={"abstain_below": above(confidence)})  # the role chunk, then the end
    assert role.choices[0].delta.content == "" and only.choices[0].delta.content is None
    assert only.choices[0].finish_reason == "abstain"
    assert only.choices[0].delta.refusal == abstain_message(confidence, above(confidence))


def test_openai_completions_confidence_and_abstention(server):
    tokenizer, model = server["tokenizer"], server["model"]
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    expected = greedy(server, prompt_ids, 8)
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY)
    ask = lambda **kw: client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, **kw)

    kept = ask(logprobs=0).choices[0]
    reported = kept.model_extra["confidence"]
    assert_matches(reported, library_confidence(model, prompt_ids, expected))
    confidence = reported["confidence"]
    assert ask(extra_body={"abstain_below": confidence}).choices[0].text == kept.text
    withheld = ask(extra_body={"abstain_below": above(confidence)}).choices[0]
    assert withheld.finish_reason == "abstain" and withheld.text == ""
    assert withheld.model_extra["refusal"] == abstain_message(confidence, above(confidence))

    streamed = list(ask(stream=True, extra_body={"abstain_below": confidence}))
    assert "".join(c.choices[0].text for c in streamed) == kept.text
    (only,) = ask(stream=True, extra_body={"abstain_below": above(confidence)})
    assert only.choices[0].text == "" and only.choices[0].finish_reason == "abstain"
    assert only.choices[0].model_extra["refusal"] == abstain_message(confidence, above(confidence))


# ---------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("value", [1.5, -0.1])
def test_abstain_below_is_validated(server, value):
    client = http(server)
    allowed = f"The abstention threshold is a probability in [0, 1], got {value}."
    tgi_answer = client.post("/generate", json={"inputs": "hi", "parameters": {"abstain_below": value}})
    assert tgi_answer.status_code == 422 and tgi_answer.json()["error_type"] == "validation"
    assert tgi_answer.json()["error"].startswith(f"Input validation error: parameters.abstain_below: {allowed}")
    seed = client.post("/generate", json={"prompt": "hi", "abstain_below": value})
    assert seed.status_code == 422 and f"abstain_below: {allowed}" in seed.json()["error"]
    stream = client.post("/generate_stream", json={"inputs": "hi", "parameters": {"abstain_below": value}})
    assert stream.status_code == 422 and allowed in stream.json()["error"]

    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=CHAT, extra_body={"abstain_below": value})
    assert refused.value.status_code == 400
    assert refused.value.body == {"message": f"abstain_below: {allowed}", "type": "invalid_request_error",
                                  "param": "abstain_below", "code": 400}
    with pytest.raises(openai.BadRequestError, match=r"abstain_below: The abstention threshold is a probability"):
        client.completions.create(model="tiny", prompt="hi", extra_body={"abstain_below": value})


def test_serve_refuses_a_threshold_outside_0_1(tiny_serve_dir):
    folder, _, _ = tiny_serve_dir
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-m", "openllm", "serve", str(folder), "--abstain-below", "2"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "--abstain-below: The abstention threshold is a probability in [0, 1], got 2.0." in result.stderr


# ---------------------------------------------------------------------------------------------------- calibrated
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny model whose config carries a fitted temperature (as `openllm calibrate` writes it), served with a
    server-wide threshold of 1: every answer is withheld unless the request says otherwise."""
    folder = tmp_path_factory.mktemp("tiny-calibrated")
    model, tokenizer = make_tiny_model(folder, initializer_range=0.5)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "logits_temperature": 2.5}))
    with serve(folder, "--abstain-below", "1") as url:
        yield {"url": url, "model": model, "tokenizer": tokenizer}


def test_server_uses_the_calibrated_temperature_and_default_threshold(calibrated):
    model, tokenizer = calibrated["model"], calibrated["tokenizer"]
    assert model.config.logits_temperature == 1.0  # the in-memory model is the raw one
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    client = httpx.Client(base_url=calibrated["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True, "abstain_below": 0}}
    details = client.post("/generate", json=body).json()["details"]  # the request's threshold overrides the server's
    assert details["finish_reason"] != "abstain"
    generated = [t["id"] for t in details["tokens"]]
    with torch.no_grad():
        raw = model(torch.tensor([prompt_ids + generated])).logits[0, len(prompt_ids) - 1:-1]
    scaled = (raw / 2.5).log_softmax(-1)
    chosen = lambda logprobs: logprobs.gather(1, torch.tensor(generated)[:, None])[:, 0].tolist()
    assert generated == raw.argmax(-1).tolist()  # scaling by a temperature keeps the greedy tokens
    assert [t["logprob"] for t in details["tokens"]] == pytest.approx(chosen(scaled), abs=1e-5)
    assert [t["logprob"] for t in details["tokens"]] != pytest.approx(chosen(raw.log_softmax(-1)), abs=1e-3)
    entropy = -(scaled.exp() * scaled).sum(-1).mean().item()
    assert details["confidence"]["mean_entropy"] == pytest.approx(entropy, abs=1e-5)

    # the server-wide threshold of 1 withholds every answer, for clients that cannot send `abstain_below`
    hf = InferenceClient(calibrated["url"], headers={"Authorization": f"Bearer {API_KEY}"})
    out = hf.text_generation(PROMPT, max_new_tokens=6, details=True)
    assert out.generated_text == "" and out.details.finish_reason == "abstain"
    assert out.details.message.startswith("Abstained: the model's confidence in its answer")
    events = list(hf.text_generation(PROMPT, max_new_tokens=6, details=True, stream=True))
    assert len(events) == 1 and events[0].generated_text == "" and events[0].details.finish_reason == "abstain"
