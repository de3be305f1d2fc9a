"""Requests meant to stall, exhaust or misuse the server: each is refused or bounded, and `/health` keeps answering
within a second while it runs."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import torch
from server_process import API_KEY, serve
from test_serve_engine import run_all

from openllm.serving.engine import Engine, SamplingParams, sample

WORDS = "the quick brown fox jumps over the lazy dog "  # tokenizes to whole words with the tiny tokenizer
HEALTH_LIMIT_S = 1.0


@pytest.fixture(scope="module")
def server(tiny_serve_dir):
    """A server with the default limits (1 MiB bodies, 4096 prefill tokens), bound to 127.0.0.1."""
    folder, model, tokenizer = tiny_serve_dir
    with serve(folder) as url:
        yield {"url": url, "model": model, "tokenizer": tokenizer}


def client(server, timeout=120) -> httpx.Client:
    return httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout)


@contextmanager
def health_watch(server):
    """Polls `/health` every 50 ms on its own connection while the block runs; yields the list of latencies."""
    latencies, stop = [], threading.Event()

    def poll():
        with httpx.Client(base_url=server["url"], timeout=30) as http:
            while not stop.is_set():
                started = time.perf_counter()
                assert http.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
                stop.wait(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def attack(server, requests: list[tuple[str, dict]], **kwargs) -> tuple[list[httpx.Response], list[float]]:
    """Send every (path, body) at once from its own connection while watching `/health`."""
    with health_watch(server) as latencies:
        time.sleep(0.2)
        with ThreadPoolExecutor(len(requests)) as pool:
            responses = list(pool.map(lambda r: client(server).post(r[0], json=r[1], **kwargs), requests))
        time.sleep(0.2)
    assert len(latencies) >= 3 and max(latencies) < HEALTH_LIMIT_S, f"/health took up to {max(latencies):.2f} s"
    return responses, latencies


def test_a_stop_string_over_the_cap_is_refused_and_the_longest_allowed_ones_do_not_stall(server):
    huge = {"prompt": WORDS, "max_tokens": 16, "stop": ["x" * 200_000]}
    response = client(server).post("/v1/completions", json=huge)
    assert response.status_code == 400
    assert "200,000 characters; the limit is 1,000" in response.json()["error"]["message"]
    tgi = client(server).post("/generate", json={"inputs": WORDS, "parameters": {"stop": ["y" * 1001]}})
    assert tgi.status_code == 422 and "the limit is 1,000" in tgi.json()["error"]

    longest = {"prompt": WORDS, "max_tokens": 48, "stop": ["ab" * 500, "b" * 1000, "the " * 250, "c" * 1000],
               "stream": True}
    responses, _ = attack(server, [("/v1/completions", longest)] * 8)
    assert all(r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") for r in responses)


def test_prompts_too_long_for_the_context_are_refused_before_tokenizing(server):
    text = WORDS * ((1 << 20) // len(WORDS) - 10)  # just under the 1 MiB body limit
    requests = [("/v1/completions", {"prompt": text, "max_tokens": 4}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}),
                ("/generate", {"inputs": text, "parameters": {"max_new_tokens": 4}}),
                ("/tokenize", {"inputs": text})] * 3
    responses, _ = attack(server, requests)
    for (path, _), response in zip(requests, responses):
        assert response.status_code == (400 if path.startswith("/v1/") else 422), (path, response.text)
        assert f"has {len(text):,} characters, more than a prompt that fits the model's context of 256 tokens" \
               in response.text
    # TGI's `truncate` keeps the last tokens of any text within the body limit: tokenized off the event loop
    truncated = {"inputs": text, "parameters": {"truncate": 8, "max_new_tokens": 2, "details": True}}
    responses, _ = attack(server, [("/generate", truncated)] * 4)
    assert all(r.status_code == 200 and r.json()["details"]["prefill"] == [] for r in responses)
    assert client(server).post("/tokenize", json={"inputs": WORDS}).status_code == 200


def test_many_long_prompts_asking_for_prompt_logprobs_do_not_stall(server):
    prompt = WORDS * 20  # about 200 tokens of a 256-token context
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 8, "decoder_input_details": True}}
    responses, _ = attack(server, [("/generate", body)] * 32)
    tokens = server["tokenizer"](prompt)["input_ids"]
    assert all(r.status_code == 200 and len(r.json()["details"]["prefill"]) == len(tokens) for r in responses)


def test_only_json_bodies_are_accepted(server):
    # a web page may post `text/plain` to a local server without asking it first (no CORS preflight)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = client(server).post("/v1/completions", content=b'{"prompt": "the", "max_tokens": 2}',
                                       headers=headers)
        assert response.status_code == 415, (content_type, response.status_code)
        assert "Content-Type: application/json" in response.json()["error"]["message"]
    tgi = client(server).post("/generate", content=b'{"inputs": "the"}', headers={"Content-Type": "text/plain"})
    assert tgi.status_code == 415 and tgi.json()["error_type"] == "validation"
    ok = client(server).post("/v1/completions", content=b'{"prompt": "the", "max_tokens": 2}',
                             headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_a_server_on_loopback_answers_only_local_host_names(server):
    port = server["url"].rsplit(":", 1)[1]
    body = {"prompt": "the", "max_tokens": 2}
    for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}"):
        response = client(server).post("/v1/completions", json=body, headers={"Host": host})
        assert response.status_code == 400, host
        assert "--allowed-hosts" in response.json()["error"]["message"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
        assert client(server).post("/v1/completions", json=body, headers={"Host": host}).status_code == 200, host


def test_prefill_keeps_full_logits_only_for_rows_that_ask_and_stays_within_its_token_budget(tiny_serve_dir):
    _, model, tokenizer = tiny_serve_dir
    lengths = [60, 100, 40, 90, 80, 30]
    prompts = [tokenizer(WORDS * 12)["input_ids"][:n] for n in lengths]
    asking = {1, 4}
    calls, inputs = [], []
    hooks = [model.lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape[:2]))),
             model.get_input_embeddings().register_forward_hook(
                 lambda module, args, out: inputs.append(tuple(args[0].shape)))]
    try:
        engine = Engine(model, tokenizer, max_batch_size=8, max_prefill_tokens=200).start()
        requests = [(ids, SamplingParams(max_new_tokens=3, prefill_logprobs=i in asking))
                    for i, ids in enumerate(prompts)]
        seqs = run_all(engine, requests)
        engine.stop()
    finally:
        for hook in hooks:
            hook.remove()
    full = [c for c in calls if c[1] > 1]
    assert sorted(full) == sorted((1, lengths[i]) for i in asking)  # one row at a time, only those asking
    prefills = [shape for shape in inputs if shape[1] > 1]
    assert len(prefills) >= 4 and all(rows * length <= 200 or rows == 1 for rows, length in prefills)
    for i, seq in enumerate(seqs):
        expected = model.generate(torch.tensor([prompts[i]]), max_new_tokens=3, do_sample=False)[0, lengths[i]:]
        assert seq.generated == expected.tolist()
        if i in asking:
            with torch.no_grad():
                logprobs = model(torch.tensor([prompts[i]])).logits[0].log_softmax(-1)
            reference = [float(logprobs[j - 1, prompts[i][j]]) for j in range(1, lengths[i])]
            assert [t.logprob for t in seq.prefill[1:]] == pytest.approx(reference, abs=1e-5)
            assert [t.id for t in seq.prefill] == prompts[i]
        else:
            assert seq.prefill == []


def test_a_uniform_just_below_one_does_not_pick_a_token_of_negligible_probability():
    """In float32, 1 - 2**-30 rounds to 1.0 and the draw lands on the last token with any probability at all."""
    logits = torch.tensor([[0.0, -0.4, -27.6]])  # the last token has probability about 1e-12
    token = sample(logits, [SamplingParams(do_sample=True)], [1 - 2**-30], "full")
    assert token.item() == 1
