"""Tool calls read from generated text and answered: every call gets a tool message, a malformed one an error."""

import pytest

from openllm.tools import TOOLS, call_tool, parse_tool_calls, run_tool_calls, tool_schemas


def calc_call(arguments, name="calculator"):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize("text, content, calls", [
    ("84", "84", None),
    ("84<|eos|>", "84", None),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call><|eos|>', "",
     [calc_call({"expression": "12*7"})]),
    # decoded with skip_special_tokens=True: the markers stay, the EOS goes
    ('Let me compute.<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>',
     "Let me compute.", [calc_call({"expression": "12*7"})]),
    ('<tool_call> {"name": "calculator", "arguments": {"expression": "1+1"}} </tool_call>\n'
     '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call><|eos|>ignored after EOS',
     "", [calc_call({"expression": "1+1"}), calc_call({"expression": "2+2"})]),
    # the closing tag cut off by the end of generation
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "3*3"}}', "", [calc_call({"expression": "3*3"})]),
    # arguments written as a JSON string, as in the OpenAI API
    ('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"5-1\\"}"}</tool_call>', "",
     [calc_call({"expression": "5-1"})]),
    ('<tool_call>{"name": "calculator"}</tool_call>', "", [calc_call({})]),
    # malformed: kept, with the raw text as arguments, so that the model hears back
    ('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>', "",
     [calc_call('{"name": "calculator", "arguments": {"expression": ', name="")]),
    ('<tool_call>{"name": 7}</tool_call>', "", [calc_call('{"name": 7}', name="")]),
    ('<tool_call>{"name": "calculator", "arguments": [1]}</tool_call>', "", [calc_call("[1]")]),
    ('<tool_call>{"name": "calculator", "arguments": "1+1"}</tool_call>', "", [calc_call("1+1")]),
    ("<tool_call>12*7</tool_call>", "", [calc_call("12*7", name="")]),
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", "", [calc_call("[" * 100_000, name="")]),
])
def test_parse_tool_calls(text, content, calls):
    message = parse_tool_calls(text)
    assert message == {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}


def test_every_call_gets_an_answer():
    text = ('<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "9**9**9"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\')"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expr": "1+1"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'
            '<tool_call>{"name": "calculator", "arguments": "not json"}</tool_call>'
            "<tool_call>" + "{" * 50_000)
    answers = run_tool_calls(text)
    assert [a["role"] for a in answers] == ["tool"] * 9
    assert [a["name"] for a in answers] == ["calculator"] * 5 + ["search", "", "calculator", ""]
    contents = [a["content"] for a in answers]
    assert contents[0] == "84"
    assert all(c.startswith("error: ") for c in contents[1:])
    assert "more than 100 digits" in contents[1] and "unexpected character" in contents[2]
    assert "bad arguments for calculator" in contents[3] and "'expr'" in contents[3]
    assert "bad arguments for calculator" in contents[4] and "'expression'" in contents[4]
    assert contents[5] == "error: unknown tool 'search'; the tools are calculator"
    assert contents[6] == contents[8] == ('error: malformed tool call; write <tool_call>{"name": ..., "arguments": '
                                          '{...}}</tool_call>')
    assert contents[7] == "error: the arguments of calculator must be a JSON object"


def test_openai_calls_and_custom_tools():
    def broken(x: int) -> str:
        raise RuntimeError("disk on fire")

    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": '{"x": 1}'}},
        {"id": "call_3", "type": "function", "function": None},
    ]}
    tools = {"calculator": TOOLS["calculator"].function, "broken": broken}
    assert run_tool_calls(message, tools) == [
        {"role": "tool", "name": "calculator", "content": "4", "tool_call_id": "call_1"},
        {"role": "tool", "name": "broken", "content": "error: broken failed: RuntimeError: disk on fire",
         "tool_call_id": "call_2"},
        {"role": "tool", "name": "", "content": call_tool("", {}), "tool_call_id": "call_3"},
    ]
    assert run_tool_calls({"role": "assistant", "content": "4"}) == []
    assert call_tool(["not", "a", "name"], {}).startswith("error: malformed tool call")
    assert call_tool("calculator", {"expression": "1+1"}, {}) == "error: unknown tool 'calculator'; the tools are none"


def test_tool_schemas():
    assert tool_schemas() == tool_schemas(["calculator"]) == [TOOLS["calculator"].schema]
    with pytest.raises(KeyError, match="Unknown tool 'search'"):
        tool_schemas(["search"])


def test_calls_rendered_by_the_chat_template_parse_back(task_tokenizer):
    """What the template writes for an assistant turn is what `parse_tool_calls` reads: the format a model learns
    from its training conversations is the one read from its generations."""
    prompt = [{"role": "user", "content": "What is 12*7 and 3+4?"}]
    reply = {"role": "assistant", "content": "Two sums.",
             "tool_calls": [calc_call({"expression": "12*7"}), calc_call({"expression": "3+4"})]}
    before = task_tokenizer.apply_chat_template(prompt, tools=tool_schemas(), add_generation_prompt=True,
                                                tokenize=False)
    full = task_tokenizer.apply_chat_template(prompt + [reply], tools=tool_schemas(), tokenize=False)
    assert full.startswith(before)
    generated = full[len(before):]
    assert parse_tool_calls(generated) == reply
    ids = task_tokenizer(generated, add_special_tokens=False)["input_ids"]
    assert parse_tool_calls(task_tokenizer.decode(ids, skip_special_tokens=True)) == reply
    assert [m["content"] for m in run_tool_calls(generated)] == ["84", "7"]
