"""Tools a model can call: the built-in ones (`TOOLS`), reading the calls out of generated text, and running them.

    prompt = tokenizer.apply_chat_template(messages, tools=tool_schemas(), add_generation_prompt=True, tokenize=False)
    message = parse_tool_calls(generated_text)    # {"role": "assistant", "content": ..., "tool_calls": [...]}
    messages += [message, *run_tool_calls(message)]   # one {"role": "tool", ...} message per call

The calls are written as the chat template writes them (`openllm.data.tokenizer.CHAT_TEMPLATE`):
`<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>`. Every <tool_call> region is a
call, malformed or not, and every call gets an answer: a tool's result, or an "error: ..." message for the model to
read (malformed JSON, an unknown tool, wrong arguments, a tool that failed). Nothing here raises on what a model wrote.
For TRL's GRPO, pass the functions themselves: `GRPOTrainer(..., tools=[TOOLS["calculator"].function])`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ..data.tokenizer import SPECIAL_TOKENS, TOOL_CALL_END, TOOL_CALL_START
from .calculator import calculator


@dataclass(frozen=True)
class Tool:
    """A function a model can call, with its JSON schema (`{"type": "function", ...}`, as
    `transformers.utils.get_json_schema` writes it from the signature and docstring), which `apply_chat_template`
    takes as `tools` and the chat template turns into one line: `calculator(expression): Evaluate ...`."""

    name: str
    function: Callable[..., str]
    schema: dict


CALCULATOR_SCHEMA = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {
                "type": "string", "description": "Numbers, + - * / // % ** and parentheses, e.g. 12*(3+4)."}},
            "required": ["expression"],
        },
        "return": {"type": "string"},
    },
}
TOOLS: dict[str, Tool] = {"calculator": Tool("calculator", calculator, CALCULATOR_SCHEMA)}

_CALL = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)(?:" + re.escape(TOOL_CALL_END) + r"|\Z)", re.DOTALL)


def tool_schemas(names: Iterable[str] | None = None) -> list[dict]:
    """The JSON schemas of the built-in tools called `names` (all of them by default), for
    `apply_chat_template(..., tools=...)`."""
    return [_get(name).schema for name in (TOOLS if names is None else names)]


def parse_tool_calls(text: str, eos_token: str = SPECIAL_TOKENS["eos_token"]) -> dict:
    """The assistant message in generated `text` (decoded with or without special tokens): `{"role": "assistant",
    "content": ..., "tool_calls": [...]}`, `tool_calls` only when there are calls.

    The text ends at the first `eos_token`. Each <tool_call> region (its closing tag optional at the end) becomes
    `{"type": "function", "function": {"name": ..., "arguments": {...}}}`. A region that is not a JSON object with a
    string "name" gets the name "" and its raw text as arguments; arguments that are not an object are kept as a
    string; `run_tool_calls` answers both with an error. The content is the text around the regions, stripped. On
    transformers >= 5.13, `tokenizer.parse_response(text, prefix=prompt)` reads well-formed calls the same way.
    """
    if eos_token and eos_token in text:
        text = text[: text.index(eos_token)]
    calls = [_parse_call(m.group(1)) for m in _CALL.finditer(text)]
    message = {"role": "assistant", "content": _CALL.sub("", text).strip()}
    if calls:
        message["tool_calls"] = calls
    return message


def _parse_call(body: str) -> dict:
    call = _json(body)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return {"type": "function", "function": {"name": "", "arguments": body}}
    arguments = call.get("arguments", {})
    # some models write the arguments as a JSON string, as the OpenAI API does
    parsed = _json_object(arguments) if isinstance(arguments, str) else arguments
    if not isinstance(parsed, dict):  # kept as a string that is no JSON object, for `call_tool` to refuse
        parsed = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"type": "function", "function": {"name": call["name"], "arguments": parsed}}


def call_tool(name: str, arguments, tools: Mapping[str, Callable[..., str]] | None = None) -> str:
    """Run tool `name` with `arguments` (a dict, or a JSON string of one) and return its result as a string, or an
    "error: ..." message; never raises. `tools` maps names to functions (the built-in `TOOLS` by default)."""
    tools = {n: t.function for n, t in TOOLS.items()} if tools is None else tools
    if not isinstance(name, str) or not name:
        return (f'error: malformed tool call; write {TOOL_CALL_START}{{"name": ..., "arguments": {{...}}}}'
                f"{TOOL_CALL_END}")
    if name not in tools:
        return f"error: unknown tool {name[:40]!r}; the tools are {', '.join(tools) or 'none'}"
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    if not isinstance(arguments, dict):
        return f"error: the arguments of {name} must be a JSON object"
    try:
        return str(tools[name](**arguments))
    except TypeError as e:  # missing or unexpected arguments
        return f"error: bad arguments for {name}: {e}"
    except Exception as e:  # a tool's failure is the model's to read, not the trainer's or the server's
        return f"error: {name} failed: {type(e).__name__}: {e}"


def run_tool_calls(message: dict | str, tools: Mapping[str, Callable[..., str]] | None = None) -> list[dict]:
    """The tool messages answering each call of an assistant `message` (or of generated text, parsed with
    `parse_tool_calls`), in order: `{"role": "tool", "name": ..., "content": ...}`, with the call's `tool_call_id`
    when it has an `id`. Also accepts the OpenAI form, whose arguments are a JSON string."""
    if isinstance(message, str):
        message = parse_tool_calls(message)
    answers = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        function = function if isinstance(function, dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        answer = {"role": "tool", "name": name, "content": call_tool(name, function.get("arguments", {}), tools)}
        if isinstance(call, dict) and call.get("id") is not None:
            answer["tool_call_id"] = call["id"]
        answers.append(answer)
    return answers


def _json(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
        return None


def _json_object(text: str) -> dict | None:
    value = _json(text)
    return value if isinstance(value, dict) else None


def _get(name: str) -> Tool:
    if name not in TOOLS:
        raise KeyError(f"Unknown tool {name!r}; the built-in tools are {', '.join(TOOLS)}.")
    return TOOLS[name]


__all__ = ["CALCULATOR_SCHEMA", "TOOLS", "Tool", "call_tool", "calculator", "parse_tool_calls", "run_tool_calls",
           "tool_schemas"]
