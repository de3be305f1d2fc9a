"""Generate text from any causal LM, streaming tokens to the terminal as they are produced.

    openllm generate MODEL --prompt "Once upon a time" --max-new-tokens 64 --temperature 0.8 --seed 0
    openllm generate MODEL --chat --prompt "What is a tokenizer?"     # through the tokenizer's chat template
    echo "Once upon a time" | openllm generate MODEL --greedy --no-stream
    openllm generate MODEL --prompt "Question: What is 7 + 5?\nAnswer:" --greedy --abstain-below 0.6

With --abstain-below P the completion is printed only when the model's confidence in it (the geometric mean of its
token probabilities) is at least P; otherwise the output is empty and stderr says `finish_reason: abstain` and why.
"""

import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import TextStreamer, set_seed

from ..models.loading import add_loading_arguments, load_causal_lm
from .confidence import (
    ABSTAIN,
    SequenceConfidence,
    abstain_message,
    check_threshold,
    sequence_confidence,
    should_abstain,
    token_logprobs_and_entropies,
)


def build_prompt(tokenizer, prompt: str, chat: bool = False, system: str | None = None) -> str:
    """The text fed to the model: the prompt itself, or the prompt as a user turn through the chat template."""
    if not chat:
        if system:
            raise ValueError("--system needs --chat: a system message only exists inside a chat template.")
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This tokenizer has no chat template, so --chat cannot format the prompt. Use a post-trained "
                         "(SFT) model, whose tokenizer carries one, or drop --chat to continue raw text.")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _prepare(model, tokenizer, prompt, *, max_new_tokens, temperature, top_k, top_p, greedy, seed, chat, system):
    """(tokenized prompt on the model's device, sampling kwargs for `model.generate`) after checking the settings."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use --greedy for argmax "
                         "decoding.")
    text = build_prompt(tokenizer, prompt, chat=chat, system=system)
    # a chat template already writes the special tokens it wants
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).to(model.device)
    inputs.pop("token_type_ids", None)
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("The prompt is empty after tokenization; give at least one character of text.")
    sampling = {"do_sample": not greedy}
    if not greedy:
        sampling.update(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
    if seed is not None:
        set_seed(seed)
    sampling["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    return inputs, sampling


def generate(
    model,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    chat: bool = False,
    system: str | None = None,
    streamer=None,
) -> str:
    """Complete `prompt` and return only the new text. `greedy` decodes deterministically; otherwise tokens are
    sampled (temperature, top-k, top-p), reproducibly when `seed` is given. `streamer` is e.g. a `TextStreamer`."""
    inputs, sampling = _prepare(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, chat=chat, system=system)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                streamer=streamer, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@contextmanager
def scoring_mode(model, tokenizer, padding_side: str):
    """Eval mode and no gradients, with the tokenizer padding on `padding_side`; both restored afterwards (a
    measurement may run inside a training run)."""
    side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def generate_completions(model, tokenizer, prompts, *, max_new_tokens: int = 96, batch_size: int = 64,
                         num_samples: int = 1, temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
    """`num_samples` completions per prompt (strings, or chat messages through the chat template), generated in
    left-padded batches: greedy when `temperature` is 0, else sampled from the full distribution."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list)
             else p for p in prompts]
    sample = temperature > 0
    if sample:
        # seeding only when sampling: a greedy measurement inside training must not reset the training RNG
        torch.manual_seed(seed)
    completions = []
    with scoring_mode(model, tokenizer, "left"):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                                 temperature=temperature if sample else None, top_k=0 if sample else None,
                                 top_p=1.0 if sample else None, num_return_sequences=num_samples,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            completions += [decoded[i:i + num_samples] for i in range(0, len(decoded), num_samples)]
    return completions


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set([eos] if isinstance(eos, int) else eos or []) | ({tokenizer.eos_token_id} - {None})


def stop_token_ids(tokenizer, stop: Sequence[str]) -> set[int]:
    """Tokens whose text contains one of the `stop` strings: generation ends on any of them. (Matching token by token
    is exact for a stop string that no token boundary can split, such as a newline.)"""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return {i for i, text in enumerate(texts) if any(s in text for s in stop)}


@dataclass
class Generation:
    """A completion with the model's confidence in it. `finish_reason` is "stop" (EOS or a stop string), "length"
    (max_new_tokens reached) or "abstain" (confidence below the threshold: `text` is empty, `message` says why and
    `withheld` keeps what would have been returned)."""

    text: str
    finish_reason: str
    confidence: SequenceConfidence
    token_ids: list[int]
    token_logprobs: list[float]
    token_entropies: list[float]
    message: str | None = None
    withheld: str | None = None

    def to_dict(self) -> dict:
        return {"text": self.text, "finish_reason": self.finish_reason, "message": self.message,
                "withheld": self.withheld, **self.confidence.to_dict(), "token_ids": self.token_ids,
                "token_logprobs": self.token_logprobs, "token_entropies": self.token_entropies}


def generate_with_confidence(
    model,
    tokenizer,
    prompt: str,
    *,
    abstain_below: float | None = None,
    stop: Sequence[str] = (),
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = 0.95,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    chat: bool = False,
    system: str | None = None,
) -> Generation:
    """Like `generate`, and also measure the model's confidence in the completion: every generated token's
    log-probability and the entropy of the distribution it was drawn from, under the model's own (calibrated)
    distribution, before sampling adjustments. With `abstain_below`, a completion whose confidence
    (exp(mean token log-prob), see `openllm.evaluation.confidence`) is strictly below it is withheld:
    `finish_reason == "abstain"`. `stop` strings end the completion (see `stop_token_ids`; the text is cut before
    them)."""
    threshold = None if abstain_below is None else check_threshold(abstain_below)
    inputs, sampling = _prepare(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, chat=chat, system=system)
    if stop:
        sampling["eos_token_id"] = sorted(_eos_ids(model, tokenizer) | stop_token_ids(tokenizer, stop))
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                output_logits=True, return_dict_in_generate=True, **sampling)
    new_ids = output.sequences[0, inputs["input_ids"].shape[1]:]
    logprobs, entropies = token_logprobs_and_entropies(torch.cat(output.logits)[:len(new_ids)], new_ids)
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    finish_reason = "stop" if cut >= 0 or (len(new_ids) and int(new_ids[-1]) in _eos_ids(model, tokenizer)) \
        else "length"
    text = text[:cut] if cut >= 0 else text
    confidence = sequence_confidence(logprobs.tolist(), entropies.tolist())
    generation = Generation(text=text, finish_reason=finish_reason, confidence=confidence,
                            token_ids=new_ids.tolist(), token_logprobs=logprobs.tolist(),
                            token_entropies=entropies.tolist())
    if should_abstain(confidence.confidence, threshold):
        generation.withheld, generation.text, generation.finish_reason = text, "", ABSTAIN
        generation.message = abstain_message(confidence.confidence, threshold)
    return generation


def add_arguments(parser):
    parser.add_argument("model", help="model folder (save_pretrained + tokenizer) or Hub id")
    parser.add_argument("--prompt", help="text to continue; read from stdin when omitted")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn through the chat template")
    parser.add_argument("--system", help="system message (with --chat)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50, help="0 disables top-k filtering")
    parser.add_argument("--top-p", type=float, default=0.95, help="1.0 disables nucleus filtering")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature/top-k/top-p)")
    parser.add_argument("--no-stream", action="store_true", help="print the completion once it is finished")
    add_loading_arguments(parser)
    parser.add_argument("--abstain-below", type=float, metavar="P",
                        help="withhold a completion whose confidence (geometric mean token probability) is below P")
    parser.add_argument("--stop", action="append", default=[], help="stop string, e.g. a newline (repeatable)")


def run(args) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read().rstrip("\n")
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, greedy=args.greedy, seed=args.seed,
                    chat=args.chat, system=args.system)
    if args.abstain_below is not None:
        check_threshold(args.abstain_below)
    model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=args.dtype, revision=args.revision,
                                      trust_remote_code=args.trust_remote_code)
    if args.abstain_below is not None or args.stop:
        # the decision needs the whole completion, so nothing is streamed
        result = generate_with_confidence(model, tokenizer, prompt, abstain_below=args.abstain_below,
                                          stop=args.stop, **settings)
        if result.finish_reason != ABSTAIN:
            print(result.text if args.chat else prompt + result.text)
        c = result.confidence
        print(f"finish_reason: {result.finish_reason}; confidence {c.confidence:.4f} (mean token log-prob "
              f"{c.mean_logprob:.4f}, min {c.min_logprob:.4f}, mean entropy {c.mean_entropy:.4f} nats, "
              f"{c.tokens} tokens)" + (f"\n{result.message}" if result.message else ""), file=sys.stderr)
        return 0
    streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if streamer is not None and not args.chat:
        print(prompt, end="", flush=True)
    completion = generate(model, tokenizer, prompt, streamer=streamer, **settings)
    if streamer is None:
        print(completion if args.chat else prompt + completion)
    return 0
