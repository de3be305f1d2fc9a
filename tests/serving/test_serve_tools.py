"""Tool calling on the OpenAI chat route, driven by the `openai` client's tool loop against a real server: tools
offered through the chat template, calls parsed from the answer (or forced by `tool_choice`), results sent back."""

import json
import re

import httpx
import openai
import pytest
from server_process import API_KEY, serve

from openllm.data.tokenizer import TOOL_CALL_END, TOOL_CALL_START
from openllm.serving.schemas import ChatCompletionRequest
from openllm.serving.tool_calls import ToolCallHoldback, assistant_message
from openllm.tools import CALCULATOR_SCHEMA, calculator, call_tool
from openllm.tools.calculator import MAX_LENGTH

WEATHER = {"type": "function", "function": {"name": "weather", "description": "The weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
    "additionalProperties": False}}}
# the built-in calculator's schema with bounded expressions: a random model's strings end only when a bound ends them
CALCULATOR = {"type": "function", "function": {
    **{k: v for k, v in CALCULATOR_SCHEMA["function"].items() if k != "return"},
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 16}},
                   "required": ["expression"], "additionalProperties": False}}}
QUESTION = [{"role": "user", "content": "What is 12 * 7? Use the calculator."}]


@pytest.fixture
def client(tool_server):
    return openai.OpenAI(base_url=f"{tool_server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_the_openai_client_tool_loop(client):
    messages = list(QUESTION)
    first = client.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR],
                                           tool_choice="required", parallel_tool_calls=False, temperature=0,
                                           max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "calculator" and call.id.startswith("call_")
        assert set(json.loads(call.function.arguments)) == {"expression"}
    messages.append(choice.message.model_dump(exclude_none=True))
    for call in choice.message.tool_calls:
        result = call_tool(call.function.name, call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = client.chat.completions.create(model="tiny", messages=messages, tools=[CALCULATOR], tool_choice="none",
                                           temperature=0, max_tokens=8)
    assert final.choices[0].message.tool_calls is None and isinstance(final.choices[0].message.content, str)
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


def test_a_named_function_and_one_call_only(client):
    response = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=[CALCULATOR, WEATHER], temperature=0.9, seed=1, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "weather"}}, parallel_tool_calls=False)
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "weather" and list(json.loads(call.function.arguments)) == ["city"]


def test_streamed_tool_calls_equal_the_whole_answer(client):
    kwargs = dict(model="tiny", messages=QUESTION, tools=[CALCULATOR], tool_choice="required", temperature=0,
                  parallel_tool_calls=False, max_tokens=80)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_auto_reads_calls_from_the_answer_and_keeps_malformed_ones_as_text():
    body = ChatCompletionRequest(messages=QUESTION, tools=[CALCULATOR])
    call = '{"name": "calculator", "arguments": {"expression": "12*7"}}'
    message, calls = assistant_message(f"Let me compute.{TOOL_CALL_START}{call}{TOOL_CALL_END}", body)
    assert calls and message["content"] == "Let me compute."
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"expression": "12*7"}
    unknown_tool = f'{TOOL_CALL_START}{{"name": "rm", "arguments": {{}}}}'
    for text in (f"{TOOL_CALL_START}{{not json{TOOL_CALL_END}", unknown_tool):
        assert assistant_message(text, body) == ({"role": "assistant", "content": text}, False)
    assert assistant_message("84", ChatCompletionRequest(messages=QUESTION)) == (
        {"role": "assistant", "content": "84"}, False)


def test_streaming_holds_back_only_what_may_begin_a_call():
    holdback = ToolCallHoldback()
    assert holdback.push("The answer <to") == "The answer "
    assert holdback.push("day>") == "<today>"
    assert holdback.push(f" ok {TOOL_CALL_START[:3]}") == " ok "
    assert holdback.push(f"{TOOL_CALL_START[3:]}{{...") == "" and holdback.push("more") == ""


def test_requests_the_server_cannot_honour_are_refused(client, tool_server, tiny_serve_dir):
    with pytest.raises(openai.BadRequestError, match="`tool_choice` needs `tools`"):
        client.chat.completions.create(model="tiny", messages=QUESTION, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="names the function 'nope', which is not among `tools`"):
        client.chat.completions.create(model="tiny", messages=QUESTION, tools=[CALCULATOR],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="send one"):
        client.chat.completions.create(model="tiny", messages=QUESTION, tools=[CALCULATOR], tool_choice="required",
                                       response_format={"type": "json_object"})
    tgi = httpx.post(f"{tool_server}/generate", headers={"Authorization": f"Bearer {API_KEY}"},
                     json={"inputs": "hi", "parameters": {"tools": [CALCULATOR]}})
    assert tgi.status_code == 422 and "TGI's routes take no tools" in tgi.json()["error"]
    folder = tiny_serve_dir[0]  # a chat template that knows nothing of tools
    with serve(folder) as url:
        legacy = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="does not offer tools to the model"):
            legacy.chat.completions.create(model="tiny", messages=QUESTION, tools=[CALCULATOR])


def test_the_built_in_tools_over_http(tool_server):
    # GET /v1/tools lists what a chat request takes as `tools`; POST /v1/tools/{name} runs one call, as the chat page
    # does for the model
    client = httpx.Client(base_url=tool_server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    listed = client.get("/v1/tools").json()
    (schema,) = listed["data"]
    ChatCompletionRequest(messages=QUESTION, tools=listed["data"])  # accepted as they are
    function = schema["function"]
    assert function["name"] == "calculator" and "return" not in function
    expression = function["parameters"]["properties"]["expression"]
    assert expression["maxLength"] == MAX_LENGTH
    # the schema's characters are the calculator's: every one it allows, the calculator reads
    allowed = [c for c in map(chr, range(32, 127)) if re.fullmatch(expression["pattern"], c)]
    assert set("0123456789+-*/%(). ") <= set(allowed) and not any(c.isalpha() and c not in "eE" for c in allowed)
    assert all("unexpected character" not in calculator(c) for c in allowed)

    def run(name, body):
        return client.post(f"/v1/tools/{name}", json=body)

    assert run("calculator", {"arguments": {"expression": "12*7"}}).json() == {"content": "84"}
    assert run("calculator", {"arguments": '{"expression": "7/2"}'}).json() == {"content": "3.5"}  # OpenAI's text
    for arguments in ({"expression": "__import__('os').system('id')"}, {"expression": "9**9**9**9"},
                      {"expression": "(" * 5000}, {"expr": "1"}, "not json", {"expression": ["1"]}):
        response = run("calculator", {"arguments": arguments})
        assert response.status_code == 200 and response.json()["content"] == call_tool("calculator", arguments)
        assert response.json()["content"].startswith("error: ")
    unknown = run("shell", {"arguments": {"command": "id"}})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    assert "the tools are calculator" in unknown.json()["error"]["message"]
    wrong = run("calculator", {"arguments": 12})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "arguments"
    assert wrong.json()["error"]["message"] == "arguments: must be a JSON object, or its JSON text"
    assert client.post("/v1/tools/calculator", content='{"arguments": {}}').status_code == 415  # JSON only
    for request in (httpx.get(f"{tool_server}/v1/tools"), httpx.post(f"{tool_server}/v1/tools/calculator",
                                                                      json={"arguments": {"expression": "1"}})):
        assert request.status_code == 401 and request.json()["error"]["type"] == "authentication_error"
