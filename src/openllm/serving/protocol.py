"""How finished and streamed generations are written on the wire: TGI's `details`, stream events and `/tokenize`,
and OpenAI's `logprobs`. Every response that carries per-token or per-sequence information is built here, so a new
field (for example a sequence-level score) is added in one place for both protocols.

The TGI shapes follow text-generation-inference's router (`router/src/lib.rs`): the same keys in the same order, and
the optional ones (`top_tokens`, `best_of_sequences`) left out when empty, as serde's `skip_serializing_if` does.
"""

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .engine import Sequence, StepOutput, Token

TGI_FINISH = ("length", "eos_token", "stop_sequence")
OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


@dataclass
class Completed:
    """One finished generation: its engine state and every output it received."""

    seq: Sequence
    outputs: list[StepOutput]

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs)

    @property
    def tokens(self) -> list[Token]:
        return [o.token for o in self.outputs]

    @property
    def finish_reason(self) -> str:
        return self.outputs[-1].finish_reason

    @property
    def seed(self) -> Optional[int]:
        return self.seq.seed if self.seq.sampling else None  # TGI reports the seed of sampled generations only

    @property
    def mean_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens) / len(self.outputs)


def compact_json(payload) -> str:
    """JSON as serde_json writes it: no spaces, UTF-8 text left as is."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse(payload, prefix: str = "data:") -> str:
    """One server-sent event. TGI writes `data:{...}` (no space); OpenAI-style routes write `data: {...}`."""
    return f"{prefix}{compact_json(payload)}\n\n"


# ---------------------------------------------------------------------------------------------------- TGI
def f32(x: Optional[float]) -> Optional[float]:
    """A log-probability as TGI writes it (an f32: the shortest decimal that reads back as the same f32)."""
    return None if x is None else float(str(np.float32(x)))


def tgi_token(t: Token) -> dict:
    return {"id": t.id, "text": t.text, "logprob": f32(t.logprob), "special": t.special}


def tgi_prefill_token(t: Token) -> dict:
    return {"id": t.id, "text": t.text, "logprob": f32(t.logprob)}  # the first one has no logprob: null


def tgi_error(message: str, kind: str) -> dict:
    return {"error": message, "error_type": kind}


def _tgi_sequence(done: Completed, prefill: bool) -> dict:
    return {"finish_reason": done.finish_reason, "generated_tokens": len(done.outputs), "seed": done.seed,
            "prefill": [tgi_prefill_token(t) for t in done.seq.prefill] if prefill else [],
            "tokens": [tgi_token(t) for t in done.tokens]}


def _tgi_top_tokens(done: Completed) -> Optional[list]:
    return [[tgi_token(a) for a in t.top] for t in done.tokens] if done.seq.params.top_n else None


def tgi_generate_response(best: Completed, prefix: str, details: bool, prefill: bool,
                          others: Optional[list[Completed]] = None) -> dict:
    """TGI's `GenerateResponse` (what `/generate` answers, and `/` inside a one-element list)."""
    response = {"generated_text": prefix + best.text}
    if details:
        body = _tgi_sequence(best, prefill)
        if others is not None:
            sequences = []
            for other in others:
                item = {"generated_text": prefix + other.text, **_tgi_sequence(other, prefill)}
                if (top := _tgi_top_tokens(other)) is not None:
                    item["top_tokens"] = top
                sequences.append(item)
            body["best_of_sequences"] = sequences
        if (top := _tgi_top_tokens(best)) is not None:
            body["top_tokens"] = top
        response["details"] = body
    return response


def tgi_stream_event(seq: Sequence, index: int, output: StepOutput, text: Optional[str], details: bool) -> dict:
    """TGI's `StreamResponse`: one per token; the last one carries the whole text (and `details` if asked)."""
    event = {"index": index, "token": tgi_token(output.token)}
    if seq.params.top_n:
        event["top_tokens"] = [tgi_token(a) for a in output.token.top]
    event["generated_text"] = text
    event["details"] = None
    if text is not None and details:
        event["details"] = {"finish_reason": output.finish_reason, "generated_tokens": index,
                            "seed": seq.seed if seq.sampling else None, "input_length": len(seq.prompt_ids)}
    return event


def tgi_tokens(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> list[dict]:
    """TGI's `/tokenize` answer: each token's id, its text in the input and where it starts and stops (characters)."""
    return [{"id": i, "text": text[a:b], "start": a, "stop": b} for i, (a, b) in zip(ids, offsets)]


# ---------------------------------------------------------------------------------------------------- OpenAI
def completion_logprobs(tokens: list[Token], offset: int) -> dict:
    """`logprobs` of `/v1/completions` (the legacy format), plus each token's probability as `token_confidences`."""
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{a.text: a.logprob for a in t.top} for t in tokens], "text_offset": offsets,
            "token_confidences": [t.confidence for t in tokens]}


def chat_logprobs(tokens: list[Token]) -> dict:
    """`logprobs` of `/v1/chat/completions`, plus each token's probability as `confidence`."""

    def entry(t: Token, with_top: bool) -> dict:
        item = {"token": t.text, "logprob": t.logprob, "bytes": list(t.text.encode()), "confidence": t.confidence}
        if with_top:
            item["top_logprobs"] = [entry(a, False) for a in t.top]
        return item

    return {"content": [entry(t, True) for t in tokens]}
