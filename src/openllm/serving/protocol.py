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

from ..evaluation.confidence import ABSTAIN, SequenceConfidence, abstain_message, sequence_confidence, should_abstain
from .engine import Sequence, StepOutput, Token

TGI_FINISH = ("length", "eos_token", "stop_sequence", ABSTAIN)
OPENAI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length", ABSTAIN: ABSTAIN}


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

    @property
    def confidence(self) -> SequenceConfidence:
        return sequence_confidence([t.logprob for t in self.tokens], [t.entropy for t in self.tokens])

    def abstention(self, threshold: Optional[float]) -> Optional[str]:
        """The message to answer instead of the text when the sequence's confidence is below `threshold`."""
        confidence = self.confidence.confidence
        return abstain_message(confidence, threshold) if should_abstain(confidence, threshold) else None


def confidence_json(confidence: SequenceConfidence) -> dict:
    """The per-sequence `confidence` object of both protocols: exp(mean token log-prob), the mean and minimum token
    log-probabilities and the mean entropy of the next-token distributions (nats, the model's own distribution)."""
    return {"confidence": confidence.confidence, "mean_logprob": confidence.mean_logprob,
            "min_logprob": confidence.min_logprob, "mean_entropy": confidence.mean_entropy}


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


def _tgi_sequence(done: Completed, prefill: bool, message: Optional[str] = None) -> dict:
    body = {"finish_reason": ABSTAIN if message else done.finish_reason, "generated_tokens": len(done.outputs),
            "seed": done.seed, "prefill": [tgi_prefill_token(t) for t in done.seq.prefill] if prefill else [],
            "tokens": [tgi_token(t) for t in done.tokens]}
    # extensions after TGI's own keys (clients parse `details` leniently): the sequence's confidence, and why it
    # was withheld
    body["confidence"] = confidence_json(done.confidence)
    if message:
        body["message"] = message
    return body


def _tgi_top_tokens(done: Completed) -> Optional[list]:
    return [[tgi_token(a) for a in t.top] for t in done.tokens] if done.seq.params.top_n else None


def tgi_generate_response(best: Completed, prefix: str, details: bool, prefill: bool,
                          others: Optional[list[Completed]] = None, abstain: Optional[str] = None) -> dict:
    """TGI's `GenerateResponse` (what `/generate` answers, and `/` inside a one-element list). With `abstain` (the
    message of a withheld answer) the text is empty and `details` says why."""
    response = {"generated_text": "" if abstain else prefix + best.text}
    if details:
        body = _tgi_sequence(best, prefill, abstain)
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


def tgi_stream_event(seq: Sequence, index: int, output: StepOutput, text: Optional[str], details: bool,
                     done: Optional[Completed] = None, abstain: Optional[str] = None) -> dict:
    """TGI's `StreamResponse`: one per token; the last one (given `done`, the finished generation) carries the whole
    text and, if asked, `details` with the sequence's confidence. The only event of an abstained stream (`abstain`:
    its message) has an empty text and a token whose text is withheld."""
    token = tgi_token(output.token)
    if abstain:
        token["text"] = ""
    event = {"index": index, "token": token}
    if seq.params.top_n and not abstain:
        event["top_tokens"] = [tgi_token(a) for a in output.token.top]
    event["generated_text"] = "" if abstain else text
    event["details"] = None
    if done is not None and details:
        event["details"] = {"finish_reason": ABSTAIN if abstain else output.finish_reason, "generated_tokens": index,
                            "seed": seq.seed if seq.sampling else None, "input_length": len(seq.prompt_ids),
                            "confidence": confidence_json(done.confidence)}
        if abstain:
            event["details"]["message"] = abstain
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
