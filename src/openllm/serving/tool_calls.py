"""Tool calling on the OpenAI chat route: `tools`, `tool_choice` and `parallel_tool_calls` in, `tool_calls` out.

The tools go to the chat template, which lists them for the model; its answer is read with `openllm.tools.
parse_tool_calls` (the calls as the template writes them: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`).
`tool_choice: "required"` or a named function constrains the answer with a grammar to calls only (of that function),
whose arguments follow the tool's parameter schema; `"auto"` lets the model choose; `"none"` offers no tools. A call
that is not a JSON object naming an offered tool leaves the whole answer as text, so the client sees what the model
wrote. When streaming, text is sent as it comes until a call begins; the calls arrive parsed, with the last chunk.
"""

import json
import uuid
from typing import Optional

from ..data.tokenizer import TOOL_CALL_END, TOOL_CALL_START
from ..tools import parse_tool_calls
from .api import APIError
from .grammar import tool_call_grammar
from .schemas import ChatCompletionRequest


def template_tools(tokenizer, body: ChatCompletionRequest) -> Optional[list[dict]]:
    """The tools to render into the prompt (None when the request offers none), or a 400 when this model's chat
    template cannot show tools to the model, or its tokenizer has no tool-call tokens."""
    if body.tool_mode is None:
        return None
    if "tools" not in (tokenizer.chat_template or "") or call_token_ids(tokenizer) is None:
        raise APIError(400, "This model's chat template does not offer tools to the model; serve a model whose "
                            "tokenizer has OpenLLM's tool-calling template (`openllm.data.tokenizer."
                            "enable_tool_calling`), or send no `tools`.", param="tools")
    if body.response_format not in (None, {"type": "text"}) and body.tool_mode in ("required", "named"):
        raise APIError(400, "`response_format` and a required `tool_choice` both constrain the answer; send one.",
                       param="tool_choice")
    return [t.model_dump(exclude_none=True) for t in body.tools]


def call_token_ids(tokenizer) -> Optional[tuple[int, int]]:
    ids = tokenizer.convert_tokens_to_ids([TOOL_CALL_START, TOOL_CALL_END])
    return None if tokenizer.unk_token_id in ids or None in ids else tuple(ids)


def required_grammar(tokenizer, body: ChatCompletionRequest) -> Optional[str]:
    """The Lark grammar of a request whose answer must be calls (`tool_choice` "required" or named), else None."""
    if body.tool_mode not in ("required", "named"):
        return None
    start, end = call_token_ids(tokenizer)
    return tool_call_grammar([t.model_dump(exclude_none=True) for t in body.tools], start, end, name=body.tool_name,
                             parallel=body.parallel_tool_calls is not False)


def assistant_message(text: str, body: ChatCompletionRequest) -> tuple[dict, bool]:
    """OpenAI's assistant message for generated `text`, and whether it carries tool calls."""
    if body.tool_mode is None:
        return {"role": "assistant", "content": text}, False
    parsed = parse_tool_calls(text)
    offered = {t.function.name for t in body.tools}
    calls = [c["function"] for c in parsed.get("tool_calls", [])]
    if not calls or not all(c["name"] in offered and isinstance(c["arguments"], dict) for c in calls):
        return {"role": "assistant", "content": text}, False
    if body.parallel_tool_calls is False:
        calls = calls[:1]
    tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]
    return {"role": "assistant", "content": parsed["content"] or None, "tool_calls": tool_calls}, True


class ToolCallHoldback:
    """Streamed text of a request offered tools: everything before the first `<tool_call>` as it comes, holding
    back an end that may be the start of one; nothing after it (the calls come parsed at the end)."""

    def __init__(self):
        self.text, self.sent, self.calling = "", 0, False

    def push(self, delta: str) -> str:
        self.text += delta
        if self.calling:
            return ""
        start = self.text.find(TOOL_CALL_START, self.sent)
        if start >= 0:
            self.calling = True
            limit = start
        else:  # keep back the longest end of the text that begins the marker
            hold = next((k for k in range(min(len(TOOL_CALL_START) - 1, len(self.text)), 0, -1)
                         if TOOL_CALL_START.startswith(self.text[-k:])), 0)
            limit = len(self.text) - hold
        out, self.sent = self.text[self.sent:max(limit, self.sent)], max(limit, self.sent)
        return out

    def rest(self) -> str:
        """At the end, when the answer turned out to be text after all: what was held back."""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out
