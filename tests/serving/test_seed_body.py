"""`POST /generate` with the body the OpenLLM seed documented, sent the way its client sent it (`requests`), next to
TGI's body; a body that mixes the two, or has unknown fields, is refused with the shape that was expected."""

import pytest
import requests
from server_process import API_KEY, greedy

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def test_seed_client_code(server):
    response = requests.post(f"{server['url']}/generate", headers=HEADERS, timeout=60, json={
        "prompt": "The history of artificial intelligence", "max_tokens": 50, "temperature": 0.7, "top_k": 40})
    assert response.status_code == 200
    text = response.json()["generated_text"]
    assert list(response.json()) == ["generated_text"] and isinstance(text, str) and text


def test_seed_body_means_the_same_as_tgi_body(server):
    tokenizer = server["tokenizer"]
    url = f"{server['url']}/generate"
    prompt = "the quick brown fox"
    greedy_text = tokenizer.decode(greedy(server, tokenizer(prompt)["input_ids"], 12), skip_special_tokens=True)
    seed_greedy = requests.post(url, headers=HEADERS, json={"prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert seed_greedy.json() == {"generated_text": greedy_text}

    sampled = {"prompt": prompt, "max_tokens": 12, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 5}
    tgi = {"inputs": prompt, "parameters": {"max_new_tokens": 12, "do_sample": True, "temperature": 0.7,
                                            "top_k": 40, "top_p": 0.9, "seed": 5}}
    first, second = (requests.post(url, headers=HEADERS, json=sampled).json() for _ in range(2))
    assert first == second == requests.post(url, headers=HEADERS, json=tgi).json()
    assert first != seed_greedy.json()


@pytest.mark.parametrize("body, fragments", [
    ({"prompt": "hi", "inputs": "hi"}, ["mixes TGI fields (inputs)", "seed-API fields (prompt)", '{"inputs"',
                                        '{"prompt"']),
    ({"inputs": "hi", "max_tokens": 5}, ["mixes TGI fields (inputs)", "seed-API fields (max_tokens)"]),
    ({"prompt": "hi", "parameters": {"max_new_tokens": 5}}, ["mixes TGI fields (parameters)"]),
    ({"prompt": "hi", "max_new_tokens": 5}, ["unknown field `max_new_tokens`", "expected the seed's shape"]),
    ({"inputs": "hi", "parameters": {"max_tokens": 5}}, ["unknown field `parameters.max_tokens`",
                                                         "expected TGI's shape"]),
    ({"text": "hi"}, ["expected TGI's shape", "or the seed's shape", "got fields ['text']"]),
    ({"prompt": "hi", "temperature": -1}, ["temperature", "expected the seed's shape"]),
])
def test_wrong_bodies_say_which_shape_was_expected(server, body, fragments):
    response = requests.post(f"{server['url']}/generate", headers=HEADERS, json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error_type"] == "validation"
    for fragment in fragments:
        assert fragment in error["error"]
