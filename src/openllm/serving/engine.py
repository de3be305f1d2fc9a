"""Continuous batching over one shared KV cache.

A worker thread owns the model. Each iteration it admits waiting requests (prefilled together as one left-padded
batch whose cache is then merged into the running batch), runs one decode step for every running request, and
chooses each row's next token with that request's own sampling parameters and random generator, batched over the
rows so that a step's Python work barely grows with the batch. Finished or cancelled rows leave the batch at once, so
a request never waits for the longest one in its batch.

Why not transformers' own continuous batching: for small models on CPU it measured 5-10x slower than batched
`generate`; this loop keeps `generate`'s batched matmuls and adds iteration-level scheduling on top.
"""

import collections
import functools
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from transformers import DynamicCache

from ..evaluation.confidence import token_logprobs_and_entropies
from ..models.modeling_openllm import CACHE, output_cache
from .grammar import Grammars
from .prefix_cache import PrefixCache

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    top_n: int = 0  # alternatives (most likely tokens) reported for every position
    prefill_logprobs: bool = False
    grammar: Optional[str] = None  # llguidance grammar the text must follow (see `grammar`)


@dataclass
class Token:
    id: int
    text: str
    logprob: Optional[float]  # log-probability under the model (temperature 1, before any penalty or truncation)
    special: bool = False
    top: list["Token"] = field(default_factory=list)
    entropy: Optional[float] = None  # nats, of the model's full next-token distribution it was drawn from

    @property
    def confidence(self) -> Optional[float]:
        return None if self.logprob is None else math.exp(self.logprob)


@dataclass
class StepOutput:
    """What a request receives after each of its tokens; the last one carries `finish_reason`."""

    token: Optional[Token]
    text: str  # text that became final with this token (may be empty while a character is incomplete)
    finish_reason: Optional[str] = None  # "length" | "eos_token" | "stop_sequence" | "cancelled" | "error"
    error: Optional[str] = None
    stop_index: Optional[int] = None  # with "stop_sequence": where the stop sequence begins in the full text


# what a client is told when its batch failed; the exception itself goes to the server's log
GENERATION_FAILED = "Generation failed; the server's log has the details."


class QueueFullError(RuntimeError):
    pass


class Sequence:
    """One request's state inside the engine."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams,
                 on_output: Optional[Callable[[StepOutput], None]] = None, owner=None):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        # called from the worker thread with each output; without it, outputs go to the engine's `on_step`
        self.on_output = on_output
        self.owner = owner  # whoever `on_step` hands this sequence's outputs to
        self.seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.rng = random.Random(self.seed)  # one uniform number per sampled token
        self.generated: list[int] = []
        self.tokens: list[Token] = []
        self.prefill: list[Token] = []
        self.text = ""  # final text of the generated tokens (special tokens skipped)
        self.stop_index: Optional[int] = None  # where in `text` a stop sequence begins
        self.finish_reason: Optional[str] = None
        self.cancelled = False  # set from the event loop; read by the worker
        self.submitted_at = time.perf_counter()
        self.admitted_at: Optional[float] = None  # when it joined the running batch
        self._prefix_offset = self._read_offset = 0
        self.cached_tokens = 0  # prompt tokens whose keys and values came from the prefix cache
        self.matcher = None  # llguidance's state of `params.grammar`, made by the engine on the first step

    @property
    def sampling(self) -> bool:
        return self.params.do_sample and self.params.temperature > 0

    def cancel(self):
        self.cancelled = True

    def decode_windows(self) -> tuple[list[int], list[int]]:
        """The ids to decode for the newest token's text: the text of a window of recent ids, minus the text of that
        window without the ids not yet shown. Decoding windows (not single ids) keeps multi-token characters and
        tokenizers that merge spaces correct."""
        ids = self.generated
        return ids[self._prefix_offset:self._read_offset], ids[self._prefix_offset:]

    def next_text(self, prefix: str, full: str) -> str:
        """Text that the newest token completes, from the two decoded windows; an incomplete character waits."""
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.generated)
            return full[len(prefix):]
        return ""

    def flush(self, tokenizer) -> str:
        full = tokenizer.decode(self.generated, skip_special_tokens=True)
        return full[len(self.text):] if full.startswith(self.text) else ""


class Engine:
    """Runs generation for many concurrent requests in one worker thread. `submit` is thread-safe."""

    def __init__(self, model, tokenizer, max_batch_size: int = 32, max_queue_size: int = 256,
                 context_length: Optional[int] = None, max_prefill_tokens: int = 4096,
                 prefix_cache_bytes: int = 256 << 20, speculative_tokens: int = 0, pack_weights: bool = True,
                 metrics=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.context_length = context_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_prefill_tokens = max_prefill_tokens
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.speculative_tokens = speculative_tokens  # prompt-lookup draft length; 0: off
        # no text longer than this fits the context: a token stands for at most as many characters as its longest
        # vocabulary entry spells (bytes, for byte-level vocabularies), doubled for normalizers that drop characters
        longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * self.context_length * max(longest, 1)
        self.metrics = metrics
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        # special: the tokenizer's named special tokens and every added token flagged special (chat markers...)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids = set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", 0)}
        self.grammars = Grammars(tokenizer, model.config.vocab_size, self.eos_ids)

        # one call per decode step with every (sequence, output) pair whose sequence has no `on_output`
        self.on_step: Optional[Callable[[list[tuple[Sequence, StepOutput]]], None]] = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # the Rust tokenizer's own decode, without transformers' per-call wrapping (10x the cost for one token), unless
        # transformers post-processes the text; one call per window beats `decode_batch`, whose thread pool costs
        # more than it saves on a few ids
        self._decode_one = backend.decode if backend is not None and not getattr(
            tokenizer, "clean_up_tokenization_spaces", False) else None
        # models built on transformers' mask helpers (its own and ours) take a ready 4-D mask as it is
        self._sdpa_mask = getattr(model.config, "_attn_implementation", None) == "sdpa" and type(
            model).__module__.split(".")[0] in ("transformers", "openllm")
        # packed on the worker thread, the only one that runs the model: oneDNN's products from weights packed on
        # another thread ran at half the speed
        self._pack_weights = pack_weights and self.device.type == "cpu"
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.cache = None  # DynamicCache of the running batch, left-padded to a common length
        self.mask: Optional[torch.Tensor] = None  # (batch, cache length): 1 for real tokens, 0 for padding
        self._cond = threading.Condition()
        self._stopped = False
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) for tokens/s
        self._thread = threading.Thread(target=self._loop, name="openllm-engine", daemon=True)

    # ------------------------------------------------------------------ public API (any thread)
    def start(self):
        self._thread.start()
        return self

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, seq: Sequence):
        with self._cond:
            # free batch slots absorb requests that arrive while a step runs; only the excess really queues
            if len(self.waiting) >= self.max_queue_size + max(0, self.max_batch_size - len(self.running)):
                raise QueueFullError(
                    f"The server is at capacity ({self.max_queue_size} requests waiting, {len(self.running)} "
                    "running). Retry later or start the server with a larger --max-queue-size.")
            self.waiting.append(seq)
            self._set_gauges()
            self._cond.notify()

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window]
        return sum(n for _, n in recent) / window

    # ------------------------------------------------------------------ worker thread
    def _loop(self):
        if self._pack_weights:
            pack_linear_weights(self.model)
        while True:
            with self._cond:
                while not self._stopped and not self.waiting and not self.running:
                    self._cond.wait()
                if self._stopped:
                    return
                new = self._admit()
                self._set_gauges()
            try:
                with torch.inference_mode():
                    self._step(new)
            except Exception:  # a failing batch must not take the server down
                logger.exception("generation failed")
                failed = []
                for seq in self.running + [s for s in new if s not in self.running]:
                    if seq.finish_reason is None:
                        seq.finish_reason = "error"
                        failed.append((seq, StepOutput(None, "", "error", error=GENERATION_FAILED)))
                self._emit(failed)
                self.running, self.cache, self.mask = [], None, None
            self._set_gauges()

    def _admit(self) -> list[Sequence]:
        """Waiting requests to prefill this step: while batch slots are free and the prefill, padded to its longest
        prompt, stays within `max_prefill_tokens` (a longer prompt alone), so a burst of long prompts neither holds
        the running requests back for long nor takes memory in proportion to the whole burst."""
        new, longest = [], 0
        while self.waiting and len(self.running) + len(new) < self.max_batch_size:
            seq = self.waiting[0]
            if seq.cancelled:
                self._finish(self.waiting.popleft(), "cancelled")
                continue
            if new and max(longest, len(seq.prompt_ids)) * (len(new) + 1) > self.max_prefill_tokens:
                break
            longest = max(longest, len(seq.prompt_ids))
            new.append(self.waiting.popleft())
        return new

    def _set_gauges(self):
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self.waiting))
            self.metrics.running.set(len(self.running))

    def _step(self, new: list[Sequence]):
        self._drop([i for i, s in enumerate(self.running) if s.cancelled], reason="cancelled")
        if new:
            self._prefill(new)
        if not self.running:
            return
        if self.speculative_tokens and len(self.running) == 1 and (draft := self._draft(self.running[0])):
            return self._speculate(self.running[0], draft)
        batch = len(self.running)
        input_ids = torch.tensor([[s.generated[-1]] for s in self.running], device=self.device)
        position_ids = torch.tensor([[len(s.prompt_ids) + len(s.generated) - 1] for s in self.running],
                                    device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], dim=1)
        # SDPA's own (batch, 1, 1, keys) mask: transformers passes a 4-D mask through instead of rebuilding it from
        # the 2-D one every step (which costs as much as a layer of a small model)
        mask = self.mask[:, None, None, :].bool() if self._sdpa_mask else self.mask
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                         use_cache=True, **{CACHE: self.cache})
        self.cache = output_cache(out)
        if self.metrics is not None:
            self.metrics.batch_size.observe(batch)
        self._advance(self.running, out.logits[:, -1])

    def _draft(self, seq: Sequence) -> list[int]:
        """Prompt lookup: the tokens that followed the last earlier occurrence of the text's final 3 (else 2) tokens,
        for a greedy row whose next tokens depend on the model's argmax alone (no penalty, no grammar)."""
        p = seq.params
        if seq.sampling or p.grammar or p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            return []
        room = min(self.speculative_tokens, p.max_new_tokens - len(seq.generated) - 1,
                   self.context_length - len(seq.prompt_ids) - len(seq.generated) - 1)
        if room < 1:
            return []
        return prompt_lookup(np.asarray(seq.prompt_ids + seq.generated), room)

    def _speculate(self, seq: Sequence, draft: list[int]):
        """One forward over the last token and the draft; the draft's tokens are kept up to the first that differs
        from the model's own greedy choice, which is kept too, so the text is what plain decoding writes."""
        ids = [seq.generated[-1]] + draft
        start = len(seq.prompt_ids) + len(seq.generated) - 1
        past = self.mask.shape[1]
        mask = torch.cat([self.mask, self.mask.new_ones(1, len(ids))], dim=1)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), attention_mask=mask,
                         position_ids=torch.arange(start, start + len(ids), device=self.device)[None],
                         use_cache=True, **{CACHE: self.cache})
        logits = out.logits[0]
        greedy = logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == greedy[accepted]:
            accepted += 1
        keep = past + 1 + accepted  # the rejected draft tokens leave the cache
        self.cache, self.mask = output_cache(out), mask[:, :keep]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]
        if self.metrics is not None:
            self.metrics.batch_size.observe(1)
        for i in range(accepted + 1):
            self._advance([seq], logits[i:i + 1])
            if seq.finish_reason is not None:
                break

    def _prefill(self, new: list[Sequence]):
        """Prefill the new rows: those whose prompt starts with a cached prefix one at a time, from the end of that
        prefix; those asking for their prompt's log-probabilities one at a time, so that full-vocabulary logits at
        every position are computed for them only; the others together."""
        hits = {}
        if self.prefix_cache is not None:
            for seq in new:
                if not seq.params.prefill_logprobs and (hit := self.prefix_cache.lookup(seq.prompt_ids)):
                    hits[id(seq)] = hit
        plain = [s for s in new if not s.params.prefill_logprobs and id(s) not in hits]
        groups = ([plain] if plain else []) + [[s] for s in new if s.params.prefill_logprobs or id(s) in hits]
        for group in groups:
            self._prefill_group(group, hits.get(id(group[0])))
            now = time.perf_counter()
            for seq in group:
                seq.admitted_at = now
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(sum(len(s.prompt_ids) for s in new))

    def _prefill_group(self, new: list[Sequence], hit=None):
        cache = _new_cache(self.model)
        if hit is not None:  # one row: the cached prefix's keys and values, then the rest of its prompt
            cached, keys, values = hit
            for layer, (k, v) in enumerate(zip(keys, values)):
                cache.update(k, v, layer)
            ids = new[0].prompt_ids
            new[0].cached_tokens = cached
            input_ids = torch.tensor([ids[cached:]], device=self.device)
            mask = torch.ones(1, len(ids), dtype=torch.long, device=self.device)
            position_ids = torch.arange(cached, len(ids), device=self.device)[None]
        else:
            length = max(len(s.prompt_ids) for s in new)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.tensor([[pad] * (length - len(s.prompt_ids)) + s.prompt_ids for s in new],
                                     device=self.device)
            mask = torch.tensor([[0] * (length - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in new],
                                device=self.device)
            # explicit positions: a left-padded row must see the same positions as the same prompt unpadded
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prefill = new[0].params.prefill_logprobs  # then `new` is that one row
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                         use_cache=True, logits_to_keep=0 if want_prefill else 1, **{CACHE: cache})
        cache = output_cache(out)
        if want_prefill:
            self._prefill_tokens(new[0], out.logits[0])
        if self.prefix_cache is not None:
            width = mask.shape[1]
            for row, seq in enumerate(new):
                start = width - len(seq.prompt_ids)  # after the row's left padding
                self.prefix_cache.store(seq.prompt_ids, [layer.keys[row:row + 1, :, start:] for layer in cache.layers],
                                        [layer.values[row:row + 1, :, start:] for layer in cache.layers])
        self._merge(new, cache, mask)
        self._advance(new, out.logits[:, -1])

    def _prefill_tokens(self, seq: Sequence, logits: torch.Tensor):
        ids = seq.prompt_ids
        targets = torch.tensor(ids[1:], device=logits.device)
        # log-probabilities of the prompt's own tokens only, without a log-softmax copy of every position's logits
        logprobs = (logits[:-1].gather(1, targets[:, None])[:, 0].float() - logits[:-1].float().logsumexp(-1)).tolist()
        texts = self._decode([[i] for i in ids], skip_special_tokens=False)
        seq.prefill = [Token(ids[0], texts[0], None, ids[0] in self.special_ids)]
        seq.prefill += [Token(i, text, lp, i in self.special_ids) for i, text, lp in zip(ids[1:], texts[1:], logprobs)]

    def _merge(self, new, cache, mask):
        """Append the freshly prefilled rows to the running batch, left-padding whichever cache is shorter."""
        if not self.running:
            self.running, self.cache, self.mask = list(new), cache, mask
            return
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        length = max(old_len, new_len)
        for old_layer, new_layer in zip(self.cache.layers, cache.layers):
            old_layer.keys = torch.cat([_left_pad(old_layer.keys, length), _left_pad(new_layer.keys, length)])
            old_layer.values = torch.cat([_left_pad(old_layer.values, length), _left_pad(new_layer.values, length)])
        self.mask = torch.cat([_left_pad_mask(self.mask, length), _left_pad_mask(mask, length)])
        self.running.extend(new)

    def _drop(self, rows: list[int], reason: Optional[str] = None):
        """Remove rows from the running batch (and the padding columns no remaining row needs)."""
        if not rows:
            return
        for i in rows:
            if reason is not None:
                self._finish(self.running[i], reason)
        keep = [i for i in range(len(self.running)) if i not in set(rows)]
        self.running = [self.running[i] for i in keep]
        if not self.running:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).int().argmax())  # leading columns that are padding in every row
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def _finish(self, seq: Sequence, reason: str):
        seq.finish_reason = reason
        if self.metrics is not None:
            self.metrics.finished.labels(reason=reason).inc()
        if reason == "cancelled":
            self._emit([(seq, StepOutput(None, "", "cancelled"))])

    def _emit(self, pairs: list[tuple[Sequence, StepOutput]]):
        batched = []
        for seq, output in pairs:
            if seq.on_output is not None:
                seq.on_output(output)
            else:
                batched.append((seq, output))
        if batched and self.on_step is not None:
            self.on_step(batched)

    def _decode(self, windows: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        decode = self._decode_one or self.tokenizer.decode
        return [decode(w, skip_special_tokens=skip_special_tokens) for w in windows]

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor):
        """Choose each row's next token, report it, and retire the rows that are done. Tensor work is batched over
        the rows and read back once; what stays per row is plain Python on lists."""
        logits = logits.float()
        chosen = choose_tokens(seqs, self._constrain(seqs, logits))
        # log-probability and entropy under the model's own distribution (its calibrated temperature applied in its
        # forward), never the one the sampling settings made
        chosen_logprobs, entropies = (x.tolist() for x in token_logprobs_and_entropies(logits, chosen))
        chosen = chosen.tolist()
        top = self._top_tokens(seqs, logits)
        for seq, token_id in zip(seqs, chosen):
            seq.generated.append(token_id)
            if seq.matcher is not None:
                seq.matcher.consume_token(token_id)
        windows = self._decode([w for seq in seqs for w in seq.decode_windows()])
        done, outputs = [], []
        now = time.perf_counter()
        for row, (seq, token_id) in enumerate(zip(seqs, chosen)):
            special = token_id in self.special_ids
            text = seq.next_text(windows[2 * row], windows[2 * row + 1])
            reason = None
            if token_id in self.eos_ids:
                reason = "eos_token"
            elif seq.matcher is not None and seq.matcher.is_stopped():  # the grammar allows nothing more
                reason = "eos_token"
            elif len(seq.generated) >= seq.params.max_new_tokens:
                reason = "length"
            elif len(seq.prompt_ids) + len(seq.generated) >= self.context_length:
                reason = "length"
            if reason is not None:
                text += seq.flush(self.tokenizer)[len(text):]
            seq.text += text
            if text and seq.params.stop and seq.stop_index is None:
                window = seq.text[-(len(text) + max(len(s) for s in seq.params.stop)):]
                offset = len(seq.text) - len(window)
                hits = [window.find(s) for s in seq.params.stop if s and s in window]
                if hits:
                    seq.stop_index, reason = offset + min(hits), "stop_sequence"
            shown = self.tokenizer.decode([token_id]) if special else text
            token = Token(token_id, shown, chosen_logprobs[row], special, top[row], entropies[row])
            seq.tokens.append(token)
            if reason is not None:
                done.append(row)
                seq.finish_reason = reason
                if self.metrics is not None:
                    self.metrics.finished.labels(reason=reason).inc()
            outputs.append((seq, StepOutput(token, text, reason, stop_index=seq.stop_index)))
        self._emit(outputs)
        self._recent.append((now, len(seqs)))
        while self._recent and now - self._recent[0][0] > 60:
            self._recent.popleft()
        if self.metrics is not None:
            self.metrics.generated_tokens.inc(len(seqs))
        self._drop([self.running.index(seqs[r]) for r in done])

    def _constrain(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """The scores to choose from: rows with a grammar see only the tokens that keep their text valid (the
        reported log-probabilities stay those of the model's own distribution)."""
        rows = [i for i, s in enumerate(seqs) if s.params.grammar]
        if not rows:
            return logits
        for i in rows:
            if seqs[i].matcher is None:
                seqs[i].matcher = self.grammars.matcher(seqs[i].params.grammar)
        scores = logits.clone()
        masked = self.grammars.mask([seqs[i].matcher for i in rows], logits[rows])
        # a grammar this vocabulary cannot continue (no token spells its next byte) ends the text
        masked[masked.isinf().all(dim=-1), min(self.eos_ids, default=0)] = 0.0
        scores[rows] = masked
        return scores

    def _top_tokens(self, seqs: list[Sequence], logits: torch.Tensor) -> list[list[Token]]:
        """The most likely alternatives of the rows that asked for them (one top-k for all of them)."""
        rows = [i for i, s in enumerate(seqs) if s.params.top_n]
        top: list[list[Token]] = [[] for _ in seqs]
        if not rows:
            return top
        n = max(seqs[i].params.top_n for i in rows)
        values, indices = torch.log_softmax(logits[rows], dim=-1).topk(n, dim=-1)
        for i, vs, ids in zip(rows, values.tolist(), indices.tolist()):
            k = seqs[i].params.top_n
            texts = self._decode([[t] for t in ids[:k]], skip_special_tokens=False)
            top[i] = [Token(t, text, v, t in self.special_ids) for t, text, v in zip(ids[:k], texts, vs[:k])]
        return top


PACKED_ROWS = 16  # the rows oneDNN lays packed weights out for; any number of rows runs, these fastest


def pack_linear_weights(model) -> int:
    """Decode steps multiply a few rows by every weight matrix: skinny products that torch's `linear` runs at a
    fraction of the CPU's speed from a row-major weight. oneDNN runs them from a weight reordered once into its
    blocked layout (what inductor's CPU freezing does) 1.3-3x faster at 1 to 64 rows, and prefills faster too
    (`benchmarks/bench_decode.py`). Every float32 `nn.Linear` on the CPU gets such a copy, which it then uses for
    every call: the weights take their memory once more; the modules keep their own weights (tied embeddings stay
    tied, state dicts unchanged). Returns how many modules were packed."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    packed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        # float32 only: bfloat16's oneDNN kernels need CPU instructions (AVX512-BF16, AMX) many machines lack
        if type(module) is not torch.nn.Linear or weight.device.type != "cpu" or weight.dtype != torch.float32 \
                or hasattr(module, "_packed_weight"):
            continue
        module._packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_ROWS)
        module.forward = functools.partial(_packed_linear, module)
        packed += 1
    return packed


def _packed_linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if module.bias is None else module.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, module._packed_weight, bias, "none", [], "")


def prompt_lookup(ids: np.ndarray, count: int, ngrams=(3, 2)) -> list[int]:
    """Up to `count` tokens that followed the most recent earlier occurrence of the last n tokens of `ids`."""
    for n in ngrams:
        if len(ids) <= n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # every earlier n-gram, by start
        starts = np.flatnonzero((windows == ids[-n:]).all(axis=1))
        if len(starts):
            follow = starts[-1] + n
            return ids[follow:follow + count].tolist()
    return []


def choose_tokens(seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
    """Next token of every row: greedy rows take the argmax, sampling rows draw after their own penalties,
    temperature, top-k and top-p, with a number from their own random generator, so a seeded request gives the same
    text in any batch."""
    scores = logits
    penalized = [row for row, s in enumerate(seqs) if s.params.repetition_penalty != 1.0 or (
        (s.params.frequency_penalty or s.params.presence_penalty) and s.generated)]
    if penalized:
        scores = logits.clone()
    for row in penalized:
        seq, p = seqs[row], seqs[row].params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.prompt_ids + seq.generated)), device=scores.device)
            values = scores[row, seen]
            scores[row, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and seq.generated:
            ids, counts = torch.tensor(seq.generated, device=scores.device).unique(return_counts=True)
            scores[row, ids] -= p.frequency_penalty * counts.to(scores.dtype) + p.presence_penalty
    greedy = [row for row, seq in enumerate(seqs) if not seq.sampling]
    if len(greedy) == len(seqs):
        chosen = scores.argmax(dim=-1)
    else:  # the argmax of the greedy rows only: over a whole vocabulary it costs as much as a softmax
        chosen = torch.zeros(len(seqs), dtype=torch.long, device=scores.device)
        if greedy:
            index = torch.tensor(greedy, device=scores.device)
            chosen[index] = scores[index].argmax(dim=-1)
    # rows that truncate the same way are sampled together: top-k rows from one top-k, top-p rows from one sort,
    # the others from the unsorted distribution
    groups: dict[str, list[int]] = {}
    for row, seq in enumerate(seqs):
        if seq.sampling:
            p = seq.params
            kind = "top_k" if 0 < p.top_k < scores.shape[-1] else "top_p" if p.top_p < 1.0 else "full"
            groups.setdefault(kind, []).append(row)
    for kind, rows in groups.items():
        params = [seqs[r].params for r in rows]
        uniforms = [seqs[r].rng.random() for r in rows]
        index = torch.tensor(rows, device=scores.device)
        chosen[index] = sample(scores[index], params, uniforms, kind)
    return chosen


def sample(scores: torch.Tensor, params: list[SamplingParams], uniforms: list[float], kind: str) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: each row with its own temperature, top-k and top-p (softmax,
    then the top-k tokens, then the smallest set holding top_p of the mass) and its own uniform number."""
    device = scores.device
    order = None
    if kind == "top_k":
        top_k = torch.tensor([p.top_k for p in params], device=device)
        scores, order = scores.topk(int(top_k.max()), dim=-1)  # sorted, highest first
        scores = scores.masked_fill(torch.arange(scores.shape[-1], device=device) >= top_k[:, None], float("-inf"))
    temperature = torch.tensor([p.temperature for p in params], device=device)
    probs = (scores / temperature[:, None]).softmax(dim=-1)
    top_p = torch.tensor([p.top_p if p.top_p < 1.0 else 2.0 for p in params], device=device)[:, None]
    if kind == "top_k":  # sorted: drop a token once the tokens before it already hold top_p of the mass
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    elif kind == "top_p":  # the same set found without sorting the vocabulary (slow on CPU)
        # a product with the mask: over a whole vocabulary on CPU, `masked_fill` and `where` take 4x as long
        probs = probs * (probs >= nucleus_threshold(probs, top_p))
    # in float64: a uniform just below 1 rounds to 1 in float32 (about once in 3e7 draws), which would pick the last
    # token that has any probability, however small; in float64 the cumulative mass before that token stays above u
    cumulative = probs.double().cumsum(dim=-1)
    u = torch.tensor(uniforms, device=device, dtype=torch.float64)[:, None] * cumulative[:, -1:]
    # the number of tokens whose cumulative mass is <= u: the first token past u, which has non-zero probability
    # (a binary search, as the cumulative sums never decrease); kept at the last such token should u reach the total
    last = (probs > 0).cumsum(dim=-1).argmax(dim=-1)
    pick = torch.minimum(torch.searchsorted(cumulative, u, right=True)[:, 0], last)
    return pick if order is None else order.gather(1, pick[:, None])[:, 0]


def nucleus_threshold(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest probability among the most likely tokens that together first hold top_p of the mass
    (tokens at least this likely form the nucleus). Sorted with numpy: on CPU, sorting values alone there is several
    times faster than `torch.sort`, which also returns indices that are not needed here."""
    ranked = torch.from_numpy(np.sort(probs.cpu().numpy(), axis=-1)[:, ::-1].copy()).to(probs.device)
    before = ranked.cumsum(dim=-1) - ranked  # the mass of the tokens more likely than each one
    count = torch.searchsorted(before, top_p.to(before.dtype)).clamp(min=1)  # how many of them stay below top_p
    return ranked.gather(1, count - 1)


def _new_cache(model):
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def _left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """Pad a (batch, heads, seq, dim) cache tensor on the left of its sequence axis to `length`."""
    missing = length - x.shape[2]
    if missing == 0:
        return x
    return torch.cat([x.new_zeros(x.shape[0], x.shape[1], missing, x.shape[3]), x], dim=2)


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1)
