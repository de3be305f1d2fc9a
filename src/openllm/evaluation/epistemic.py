"""Add an epistemic head to a trained model, the model frozen: total, aleatoric and epistemic uncertainty of every
prediction from one forward pass, where an ensemble needs one pass per member.

    openllm epistemic-head MODEL --dataset train.jsonl --output-dir MODEL-epistemic
    openllm eval MODEL-epistemic --dataset held_out.jsonl          # reports the split, as --ensemble does

The head (`OpenLLMEpistemicHead` in `modeling_openllm.py`, an epinet) perturbs the top-k logits by a random index z
through a learnable network plus a fixed random prior network, both reading the model's hidden states (embeddings,
middle and last layer). Training makes the predictions agree across z on the texts given, so those texts define "in
domain": pass the model's training data, or text like it. The model runs once over them; the head then trains on the
stored states and top-k logits alone, minimising the next-token NLL averaged over z, which is lowest when the
learnable network cancels the prior. The model's weights and logits never change.

A share of the texts (`--check-fraction`) is kept out of training to check the result: the report gives the
epistemic uncertainty there and on the same texts with their tokens shuffled, and the AUROC of telling them apart.
The output folder is the model with the head (config.json's `epistemic_head`, its weights) and `epistemic_head.json`
(the report), written atomically.
"""

import json
import math
import random
from pathlib import Path

import torch

from .. import atomic
from ..data.text import add_text_arguments, load_args_texts
from ..models.configuration_openllm import EPISTEMIC_HEAD_DEFAULTS
from ..models.loading import add_loading_arguments, load_causal_lm
from ..models.modeling_openllm import OpenLLMEpistemicHead
from .metrics import auroc
from .uncertainty import head_uncertainty, scored_batches, shuffled_texts

REPORT_FILE = "epistemic_head.json"


def add_epistemic_head(model, seed: int = 0, **spec) -> OpenLLMEpistemicHead:
    """Put a new, untrained epistemic head on `model` (in place); `spec` overrides `EPISTEMIC_HEAD_DEFAULTS`."""
    if model.config.model_type != "openllm":
        raise ValueError(f"An epistemic head goes on OpenLLM models, whose forward pass carries it; this is a "
                         f"{model.config.model_type!r} model (`openllm convert --to openllm` converts Llama ones).")
    model.config.epistemic_head = {**EPISTEMIC_HEAD_DEFAULTS, **spec}
    model.config._validate()
    torch.manual_seed(seed)
    head = OpenLLMEpistemicHead(model.config)
    model._init_weights(head)
    model.epistemic_head = head.to(model.device)
    return head


def _head_training_data(model, tokenizer, texts, **windows):
    """(features, bucket logits, target buckets) at every scored position of `texts`: all the head needs."""
    head = model.epistemic_head
    features, buckets, targets = [], [], []
    with torch.inference_mode():
        for input_ids, attention_mask, scored, _, target in scored_batches(model, tokenizer, texts, **windows):
            out = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                        use_cache=False, output_hidden_states=True)
            scored = scored.to(model.device)
            bucket_logits, _, top_ids = head.buckets(out.logits[scored])
            features.append(head.features(out.hidden_states)[scored].float())
            buckets.append(bucket_logits)
            targets.append(head.target_buckets(top_ids, target.to(model.device)))
    return torch.cat(features), torch.cat(buckets), torch.cat(targets)


def train_epistemic_head(model, tokenizer, texts, *, steps: int = 300, batch_tokens: int = 1024,
                         index_samples: int = 8, lr: float = 3e-3, seed: int = 0, block_size=None, stride=None,
                         batch_size: int = 8) -> dict:
    """Train `model.epistemic_head`'s learnable network on `texts`, the model frozen; returns the excess NLL
    (nats/token the perturbations add over the model's own NLL, 0 when the predictions agree across z) before and
    after, on the training batches."""
    head = model.epistemic_head
    model.eval()
    features, buckets, targets = _head_training_data(model, tokenizer, texts, block_size=block_size, stride=stride,
                                                   batch_size=batch_size)
    own_nll = -torch.log_softmax(buckets, -1).gather(-1, targets[:, None]).squeeze(-1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([head.learnable_in, head.learnable_out], lr=lr, weight_decay=0.0)
    excess = []
    for step in range(steps):
        for group in optimizer.param_groups:  # cosine decay: the last steps settle the cancellation
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = torch.randint(len(features), (batch_tokens,), generator=generator).to(features.device)
        index = torch.randn(index_samples, head.index_dim, generator=generator)
        log_probs = head.index_log_probs(features[rows], buckets[rows], index)  # (z, tokens, k+1)
        nll = -log_probs.gather(-1, targets[rows][None, :, None].expand(len(index), -1, 1)).mean()
        optimizer.zero_grad(set_to_none=True)
        nll.backward()
        optimizer.step()
        excess.append(nll.item() - own_nll[rows].mean().item())
    tail = max(1, steps // 10)
    return {"steps": steps, "tokens": len(features), "excess_nll_first": excess[0] if excess else None,
            "excess_nll_last": sum(excess[-tail:]) / tail if excess else None}


def check_separation(model, tokenizer, texts, **windows) -> dict:
    """Mean epistemic uncertainty per text on `texts` and on the same texts with their tokens shuffled, and the
    AUROC with which it tells the shuffled ones apart (0.5: not at all, 1: always)."""
    in_domain = head_uncertainty(model, tokenizer, texts, **windows)
    shuffled = head_uncertainty(model, tokenizer, shuffled_texts(tokenizer, texts), **windows)
    scores = [[s["epistemic"] for s in u["sequences"]] for u in (in_domain, shuffled)]
    return {"texts": len(scores[0]), "epistemic_in_domain": in_domain["epistemic"],
            "epistemic_shuffled": shuffled["epistemic"], "auroc_shuffled": auroc(*scores)}


def add_arguments(parser):
    parser.add_argument("model", help="OpenLLM model folder (save_pretrained + tokenizer)")
    add_text_arguments(parser, "in-domain texts (the model's training data or text like it)")
    parser.add_argument("--output-dir", required=True, help="write the model with its epistemic head here")
    for key, value in EPISTEMIC_HEAD_DEFAULTS.items():
        parser.add_argument(f"--head-{key.replace('_', '-')}", type=type(value), default=value,
                            help=f"the head's {key} (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the head")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--check-fraction", type=float, default=0.1,
                        help="share of the texts kept out of training to check the head on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation, its training and "
                        "the check split")
    parser.add_argument("--block-size", type=int, help="tokens per window (default: the model's context, ≤ 2048)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_loading_arguments(parser, dtype=False)  # the head is trained in float32


def run(args) -> int:
    texts, _ = load_args_texts(args)
    if not 0 < args.check_fraction < 1 or len(texts) < 2:
        raise ValueError(f"Need at least 2 texts and a --check-fraction in (0, 1), got {len(texts)} texts and "
                         f"{args.check_fraction}: some texts train the head, the others check it.")
    random.Random(args.seed).shuffle(texts)
    cut = min(len(texts) - 1, max(1, round(args.check_fraction * len(texts))))
    train, check = texts[cut:], texts[:cut]
    model, tokenizer = load_causal_lm(args.model, device=args.device, dtype="float32", revision=args.revision,
                                      trust_remote_code=args.trust_remote_code)
    add_epistemic_head(model, seed=args.seed, **{k: getattr(args, f"head_{k}") for k in EPISTEMIC_HEAD_DEFAULTS})
    windows = {"block_size": args.block_size, "batch_size": args.batch_size}
    report = {"model": args.model, "dataset": args.dataset, "epistemic_head": model.config.epistemic_head,
              "training": train_epistemic_head(model, tokenizer, train, steps=args.steps, lr=args.lr,
                                               seed=args.seed, **windows),
              "check": check_separation(model, tokenizer, check, **windows)}
    with atomic.folder(Path(args.output_dir)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / REPORT_FILE, report)
    print(json.dumps(report, indent=2))
    print(f"\nWrote {args.output_dir}: the model with its epistemic head. `openllm eval {args.output_dir} --dataset "
          "...` reports the split of its uncertainty.")
    return 0
