"""Structured output: a request's JSON schema, any JSON object, or a regular expression, compiled by llguidance (the
grammar engine of llama.cpp and vLLM) into a matcher that, before every token, masks the tokens that cannot continue
a valid answer. A sequence that follows its grammar to the end is complete: nothing is cut, nothing is repaired.

- OpenAI: `response_format` `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`;
- TGI: `parameters.grammar` `{"type": "json", "value": SCHEMA}` or `{"type": "regex", "value": "..."}`.

JSON is written compactly (no whitespace between tokens, as OpenAI's structured outputs are) unless the schema says
otherwise in llguidance's `x-guidance` options. A schema feature llguidance does not implement is refused with its
name before anything is generated.
"""

import json
from typing import Optional

import numpy as np
import torch

JSON_DEFAULTS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    pass


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError:  # pragma: no cover - the serve extra installs it
        raise GrammarError("structured output needs llguidance: pip install 'openllm-hf[serve]'") from None
    return llguidance


def grammar_text(kind: str, value) -> str:
    """llguidance's grammar for `kind` "json" (a JSON schema, as a dict or its text) or "regex"."""
    llguidance = _llguidance()
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise GrammarError("the JSON schema must be an object")
        return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=JSON_DEFAULTS)
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise GrammarError("the regular expression must be a non-empty string")
        return llguidance.LLMatcher.grammar_from_regex(value)
    if kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(value)
    raise GrammarError(f"unknown grammar type `{kind}`; use `json` or `regex`")


class Grammars:
    """One per engine: the tokenizer's token table for llguidance (built on first use), grammar checks for the
    routes, and the masks of a decode step's constrained rows."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._table = None

    @property
    def table(self):
        if self._table is None:
            llguidance = _llguidance()
            if not getattr(self.tokenizer, "is_fast", False):
                raise GrammarError("structured output needs a fast (Rust) tokenizer, and this model has none")
            self._table = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                       eos_token=self.eos_ids or None)
        return self._table

    def check(self, kind: str, value) -> str:
        """The grammar text of a request, or a `GrammarError` naming what llguidance cannot do with it."""
        text = grammar_text(kind, value)
        error = _llguidance().LLMatcher.validate_grammar(text, self.table)
        if error:
            raise GrammarError(f"the {'JSON schema' if kind == 'json' else 'regular expression'} is not supported: "
                               f"{error}")
        return text

    def matcher(self, text: str):
        return _llguidance().LLMatcher(self.table, text, log_level=0)

    def mask(self, matchers: list, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (one row per matcher) with every token its matcher forbids at -inf."""
        import llguidance.torch

        bitmask = llguidance.torch.allocate_token_bitmask(len(matchers), scores.shape[-1])
        for row, matcher in enumerate(matchers):
            llguidance.torch.fill_next_token_bitmask(matcher, bitmask, row)
        # bits to booleans with numpy: llguidance's own applier compiles a torch kernel on first use (seconds on CPU)
        allowed = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :scores.shape[-1]]
        return scores.masked_fill(torch.from_numpy(allowed == 0).to(scores.device), float("-inf"))


def tool_call_grammar(tools: list[dict], start_id: int, end_id: int, name: Optional[str] = None,
                      parallel: bool = True) -> str:
    """A Lark grammar for answers that are tool calls only, as the chat template writes them: one (or, with
    `parallel`, several) `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the arguments following the
    tool's parameter schema, the name `name` or any offered tool's; the markers are matched as their token ids."""
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": fn["name"]}, "arguments": fn.get("parameters") or {"type": "object"}}}
             for fn in (t["function"] for t in tools) if name is None or fn["name"] == name]
    # one optional space where the template writes one (`{"name": ..., "arguments": ...}`)
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": {"whitespace_pattern": " ?"}}
    return (f"start: call{'+' if parallel else ''}\ncall: <[{start_id}]> body <[{end_id}]>\n"
            f"body: %json {json.dumps(schema)}\n")


def openai_grammar(response_format: Optional[dict]) -> Optional[tuple[str, object]]:
    """(kind, value) of an OpenAI `response_format`, None for plain text."""
    if response_format is None or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json", {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise GrammarError("`response_format.json_schema.schema` must be a JSON schema object")
        return "json", spec["schema"]
    raise GrammarError(f"unknown `response_format.type` {kind!r}; use `text`, `json_object` or `json_schema`")
