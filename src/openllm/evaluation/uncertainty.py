"""Epistemic vs aleatoric uncertainty of next-token predictions, from an ensemble of checkpoints.

    openllm eval MODEL --dataset held_out.jsonl --ensemble MODEL-seed1 --ensemble MODEL-seed2

For every scored token, with p_m the next-token distribution of member m and p̄ their mean:
- total uncertainty     H[p̄]                  (entropy of the ensemble's prediction)
- aleatoric             mean_m H[p_m]         (expected entropy: what every member finds ambiguous in the data)
- epistemic             H[p̄] - mean_m H[p_m]  (mutual information between the prediction and the member: how much
                                                the members disagree, which more training data would reduce)
all in nats, averaged over tokens and, per text, in `sequences`.

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
    texts, windows, *_ = prepare_windows(models[0], tokenizer, texts, block_size, stride)
    sums = torch.zeros(len(texts), 3, dtype=torch.float64)  # total, aleatoric, epistemic
    counts = torch.zeros(len(texts), dtype=torch.float64)
    for model in models:
        model.eval()
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size]
            input_ids, attention_mask, targets = batch_tensors(batch)
            scored = targets != -100
            owner = torch.tensor([w[2] for w in batch])[:, None].expand_as(targets)[scored]
            logprobs = torch.stack([
                torch.log_softmax(m(input_ids=input_ids.to(m.device), attention_mask=attention_mask.to(m.device),
                                    use_cache=False).logits[scored.to(m.device)].float().cpu(), dim=-1)
                for m in models])  # (members, tokens, vocab)
            member_entropy = -(logprobs.exp() * logprobs).sum(-1)  # (members, tokens)
            mean_logprobs = torch.logsumexp(logprobs, 0) - math.log(len(models))
            total = -(mean_logprobs.exp() * mean_logprobs).sum(-1)
            aleatoric = member_entropy.mean(0)
            # clamp: rounding can make a zero mutual information slightly negative
            values = torch.stack([total, aleatoric, (total - aleatoric).clamp_min(0)], -1).double()
            sums.index_add_(0, owner, values)
            counts.index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
    overall = sums.sum(0) / counts.sum()
    return {
        "members": len(models),
        "tokens": int(counts.sum()),
        "total": float(overall[0]),
        "aleatoric": float(overall[1]),
        "epistemic": float(overall[2]),
        "method": "ensemble of checkpoints: total H[mean p], aleatoric mean H[p_m], epistemic = their difference "
                  "(mutual information), nats per token",
        "sequences": [{"index": i, "tokens": int(n), "total": float(s[0] / n), "aleatoric": float(s[1] / n),
                       "epistemic": float(s[2] / n)} for i, (s, n) in enumerate(zip(sums, counts))],
    }


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
