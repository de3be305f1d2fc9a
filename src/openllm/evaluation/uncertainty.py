"""Epistemic vs aleatoric uncertainty of next-token predictions, from an ensemble of checkpoints or, in one forward
pass, from a model's epistemic head (`head_uncertainty`; `openllm epistemic-head` adds one, see `epistemic.py`).

    openllm eval MODEL --dataset held_out.jsonl --ensemble MODEL-seed1 --ensemble MODEL-seed2
    openllm eval MODEL-with-head --dataset held_out.jsonl

For every scored token, with p_m the next-token distribution of member m and p̄ their mean:
- total uncertainty     H[p̄]                  (entropy of the ensemble's prediction)
- aleatoric             mean_m H[p_m]         (expected entropy: what every member finds ambiguous in the data)
- epistemic             H[p̄] - mean_m H[p_m]  (mutual information between the prediction and the member: how much
                                                the members disagree, which more training data would reduce)
all in nats, averaged over tokens and, per text, in `sequences`. The head's random index z plays the member's part.

Why an ensemble of checkpoints (deep ensembles, Lakshminarayanan et al., 2017): it works on any OpenLLM checkpoint
with no change to the model; members can be independent runs (different seeds or data orders) or, at no extra
training cost, checkpoints of one run (snapshot ensembles), or a base model merged with different LoRA adapters.
MC dropout would need a model trained with dropout, and OpenLLM presets train without it (dropout at inference on
a model trained without it measures noise we injected, not the model's uncertainty).
"""

import math
import random

import torch

from ..models.loading import load_causal_lm
from .perplexity import batch_tensors, prepare_windows


def scored_batches(model, tokenizer, texts, *, block_size=None, stride=None, batch_size: int = 8):
    """`openllm eval`'s windows of `texts`, in batches: (input_ids, attention_mask, scored, owner, targets), where
    `scored` marks the positions that predict a token, and `owner` and `targets` give, for each of those, the index
    of its text and the token it predicts."""
    _, windows, *_ = prepare_windows(model, tokenizer, texts, block_size, stride)
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        input_ids, attention_mask, targets = batch_tensors(batch)
        scored = targets != -100
        owner = torch.tensor([w[2] for w in batch])[:, None].expand_as(targets)[scored]
        yield input_ids, attention_mask, scored, owner, targets[scored]


def uncertainty_by_text(model, tokenizer, texts, token_uncertainty, **windows) -> dict:
    """Token-averaged total, aleatoric and epistemic uncertainty, overall and per text under `sequences`;
    `token_uncertainty(input_ids, attention_mask, scored)` gives them, (tokens, 3), where `scored` is True. `model`
    only sets the windows (its context length)."""
    owners, values = [], []
    with torch.inference_mode():
        for input_ids, attention_mask, scored, owner, _ in scored_batches(model, tokenizer, texts, **windows):
            owners.append(owner)
            values.append(token_uncertainty(input_ids, attention_mask, scored).double().cpu())
    owners = torch.cat(owners)
    sums = torch.zeros(int(owners.max()) + 1, 3, dtype=torch.float64).index_add_(0, owners, torch.cat(values))
    counts = owners.bincount().double()
    overall = sums.sum(0) / counts.sum()
    return {
        "tokens": int(counts.sum()),
        "total": float(overall[0]),
        "aleatoric": float(overall[1]),
        "epistemic": float(overall[2]),
        "sequences": [{"index": i, "tokens": int(n), "total": float(s[0] / n), "aleatoric": float(s[1] / n),
                       "epistemic": float(s[2] / n)} for i, (s, n) in enumerate(zip(sums, counts))],
    }


def ensemble_uncertainty(models, tokenizer, texts, *, block_size=None, stride=None, batch_size: int = 8) -> dict:
    """Token-averaged total, aleatoric and epistemic uncertainty (nats) of the ensemble `models` (same tokenizer) on
    `texts`, with the same windows as `openllm eval`; plus the same three numbers per text under `sequences`."""
    if len(models) < 2:
        raise ValueError(f"An ensemble needs at least 2 members to disagree, got {len(models)}; pass more "
                         "checkpoints with --ensemble.")
    vocab = {m.get_output_embeddings().out_features for m in models}
    if len(vocab) != 1:
        raise ValueError(f"Ensemble members have different vocabulary sizes {sorted(vocab)}; they must share one "
                         "tokenizer.")
    for model in models:
        model.eval()

    def token_uncertainty(input_ids, attention_mask, scored):
        logprobs = torch.stack([
            torch.log_softmax(m(input_ids=input_ids.to(m.device), attention_mask=attention_mask.to(m.device),
                                use_cache=False).logits[scored.to(m.device)].float().cpu(), dim=-1)
            for m in models])  # (members, tokens, vocab)
        member_entropy = -(logprobs.exp() * logprobs).sum(-1)  # (members, tokens)
        mean_logprobs = torch.logsumexp(logprobs, 0) - math.log(len(models))
        total = -(mean_logprobs.exp() * mean_logprobs).sum(-1)
        aleatoric = member_entropy.mean(0)
        # clamp: rounding can make a zero mutual information slightly negative
        return torch.stack([total, aleatoric, (total - aleatoric).clamp_min(0)], -1)

    report = uncertainty_by_text(models[0], tokenizer, texts, token_uncertainty, block_size=block_size,
                                  stride=stride, batch_size=batch_size)
    return {"members": len(models), **report,
            "method": "ensemble of checkpoints: total H[mean p], aleatoric mean H[p_m], epistemic = their difference "
                      "(mutual information), nats per token"}


def head_uncertainty(model, tokenizer, texts, *, block_size=None, stride=None, batch_size: int = 8,
                     num_samples: int | None = None) -> dict:
    """`ensemble_uncertainty`'s report from one model with an epistemic head (`openllm epistemic-head`): one forward
    pass, then `num_samples` indices z (the config's by default) through the head alone."""
    head = getattr(model, "epistemic_head", None)
    if head is None:
        raise ValueError("This model has no epistemic head; add one with `openllm epistemic-head MODEL --dataset "
                         "TRAINING_TEXTS --output-dir OUT`, or pass ensemble members.")
    model.eval()
    index = head.sample_index(num_samples)

    def token_uncertainty(input_ids, attention_mask, scored):
        out = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                    use_cache=False, output_hidden_states=True)
        scored = scored.to(model.device)
        return head(head.features(out.hidden_states)[scored], out.logits[scored], index)

    report = uncertainty_by_text(model, tokenizer, texts, token_uncertainty, block_size=block_size, stride=stride,
                                  batch_size=batch_size)
    return {"samples": len(index), **report,
            "method": "epistemic head (epinet): total H[mean_z p_z], aleatoric mean_z H[p_z], epistemic = their "
                      "difference (mutual information with the index z), nats per token"}


def shuffled_texts(tokenizer, texts, seed: int = 0) -> list[str]:
    """Each text with its tokens in a random order: the same tokens, out of distribution as sequences."""
    rng = random.Random(seed)
    shuffled = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rng.shuffle(ids)
        shuffled.append(tokenizer.decode(ids))
    return shuffled


def load_ensemble(paths, tokenizer, device="auto", dtype: str = "auto", trust_remote_code: bool = False):
    """Load the extra members of an ensemble, checking that each one tokenizes like `tokenizer`."""
    members = []
    for path in paths:
        model, member_tokenizer = load_causal_lm(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        if member_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"Ensemble member {path} has a different tokenizer from the evaluated model; the members "
                             "of an ensemble must share one (e.g. checkpoints or seeds of the same recipe).")
        members.append(model)
    return members
