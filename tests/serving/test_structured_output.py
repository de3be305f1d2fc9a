"""Structured output on a real server with a random model: every sampled answer follows the requested JSON schema or
regular expression, streamed or not, through the `openai` client and TGI's `grammar`."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from helpers.tiny_lm import save_tiny_model, train_tokenizer
from server_process import API_KEY, serve
from tiny_model import CHAT_TEMPLATE

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "member": {"type": "boolean"},
    },
    "required": ["name", "age", "colour", "tags", "member"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A random `tiny` model whose byte-level tokenizer can spell any text (the grammar needs `{`, digits, ...)."""
    folder = tmp_path_factory.mktemp("structured")
    tokenizer = train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    save_tiny_model(folder, tokenizer)
    with serve(folder) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_fifty_sampled_answers_all_follow_the_json_schema(client):
    def ask(seed):
        return client.chat.completions.create(model="tiny", messages=MESSAGES, response_format=RESPONSE_FORMAT,
                                              temperature=1.0, seed=seed, max_tokens=200)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(ask, range(50)))
    answers = [json.loads(r.choices[0].message.content) for r in responses]
    for answer in answers:
        jsonschema.validate(answer, SCHEMA)
    assert all(r.choices[0].finish_reason == "stop" for r in responses)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 40  # sampled, not one answer forced 50 times


def test_streamed_json_is_the_same_text_as_the_answer(client):
    kwargs = dict(model="tiny", messages=MESSAGES, response_format=RESPONSE_FORMAT, temperature=1.0, seed=7,
                  max_tokens=200)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(stream=True, **kwargs) if chunk.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), SCHEMA)


def test_json_object_on_completions_and_greedy(client):
    response = client.completions.create(model="tiny", prompt="JSON:", max_tokens=200, temperature=0,
                                         extra_body={"response_format": {"type": "json_object"}})
    choice = response.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.text), dict)
    else:  # cut at max_tokens, as OpenAI's JSON mode is: a prefix of a valid object
        assert choice.finish_reason == "length" and choice.text.startswith("{")


def test_tgi_grammar_regex_and_json(server):
    http = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    pattern = r"[0-9]{3}-[a-z]{2,5}( [A-Z][a-z]{1,4}){0,2}"
    for seed in range(10):
        body = {"inputs": "Code:", "parameters": {"max_new_tokens": 40, "do_sample": True, "seed": seed,
                                                  "grammar": {"type": "regex", "value": pattern}}}
        text = http.post("/generate", json=body).json()["generated_text"]
        assert re.fullmatch(pattern, text), text
    body = {"inputs": "Person:", "parameters": {"max_new_tokens": 200, "grammar": {"type": "json", "value": SCHEMA}}}
    jsonschema.validate(json.loads(http.post("/generate", json=body).json()["generated_text"]), SCHEMA)


def test_unsupported_schemas_are_refused_naming_what_is_wrong(client, server):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                         "dependentSchemas": {"a": {}}}}}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format=bad)
    assert "dependentSchemas" in error.value.message and error.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError, match="unknown `response_format.type` 'xml'"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "xml"})
    http = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    response = http.post("/generate", json={"inputs": "x", "parameters": {"grammar": {"type": "regex",
                                                                                    "value": "(unclosed"}}})
    assert response.status_code == 422 and "regular expression is not supported" in response.json()["error"]
