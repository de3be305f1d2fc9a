"""Perplexity and bits per byte of a causal LM on held-out texts, with next-token calibration, per-text confidence and
a few sample generations: the numbers behind `openllm eval --dataset`.

    results = evaluate_model(model, tokenizer, texts, output_dir="out/model")   # eval_results.json, reliability.png

Accounting, so the numbers are exact and comparable across tokenizers:
- Each text is scored on its own: its tokens (no special tokens added) are preceded by one BOS token (EOS when the
  tokenizer has no BOS) and every text token is predicted exactly once. Texts longer than `block_size` are scored with
  overlapping windows: each window re-reads up to `block_size - stride` tokens of context and scores `stride` new
  ones, so every token after the first window has at least `block_size - stride` tokens of context.
- `loss` is the mean negative log-likelihood in nats per scored token, `perplexity = exp(loss)`, and
  `bits_per_byte = loss * tokens / (bytes * ln 2)` where `bytes` counts the UTF-8 bytes of the evaluated texts.
- Calibration uses the top-1 next-token prediction: `ece` over 15 equal-width confidence bins, `accuracy` the top-1
  accuracy, and `brier` the multi-class Brier score over the full vocabulary (see `metrics`).
"""

import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..versions import framework_versions
from .confidence import sequence_confidence
from .generation import generate
from .metrics import NUM_BINS, brier_per_row, expected_calibration_error, plot_reliability_diagram, reliability_bins

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
RELIABILITY_FILE = "reliability.png"


def sliding_windows(length: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first_target) over a sequence of `length` tokens whose position 0 is a prefix token: the
    window reads tokens [start, end) and scores targets [first_target, end), each predicted from the position before
    it. Every position 1..length-1 is scored exactly once."""
    if not 1 <= stride < block_size:
        raise ValueError(f"stride must be in [1, block_size - 1] = [1, {block_size - 1}], got {stride}: each window "
                         "must keep at least one token of context from the one before.")
    windows, start, first_target = [], 0, 1
    while True:
        end = min(start + block_size, length)
        windows.append((start, end, first_target))
        if end == length:
            return windows
        first_target, start = end, start + stride


def prepare_windows(model, tokenizer, texts, block_size=None, stride=None):
    """(non-empty texts, windows, block_size, stride, prefix id, scored tokens) for scoring `texts` with `model`;
    each window is (input ids, targets aligned with the logits with -100 where not scored, text index)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("No non-empty text to evaluate.")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token, so the first token of a text cannot be "
                         "predicted from anything; add one (e.g. tokenizer.bos_token = ...) before evaluating.")
    context = getattr(model.config, "max_position_embeddings", None) or 1024
    block_size = block_size or min(context, 2048)
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (a context token and a target), got {block_size}.")
    if block_size > context:
        raise ValueError(f"block_size {block_size} exceeds the model's context length {context}.")
    stride = stride or max(1, block_size // 2)
    windows, num_tokens = [], 0
    for index, text in enumerate(texts):
        ids = [prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]
        num_tokens += len(ids) - 1
        for start, end, first in sliding_windows(len(ids), block_size, stride):
            targets = [-100] * (first - 1 - start) + ids[first:end] + [-100]
            windows.append((ids[start:end], targets, index))
    return texts, windows, block_size, stride, prefix, num_tokens


def batch_tensors(batch):
    """(input_ids, attention_mask, targets) of a list of windows, right-padded: real tokens keep positions 0..n-1."""
    width = max(len(w[0]) for w in batch)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
    targets = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, tgt, *_) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        targets[row, :len(tgt)] = torch.tensor(tgt)
    return input_ids, attention_mask, targets


def per_sequence_confidence(owners, token_logprobs, token_entropies, num_sequences: int) -> list[dict]:
    """Per text: scored tokens, mean and minimum token log-probability (nats) and mean predictive entropy (nats),
    from per-token values and the index of the text each token belongs to."""
    order = owners.argsort(stable=True)
    counts = owners.bincount(minlength=num_sequences).tolist()
    rows = []
    for index, (lp, ent) in enumerate(zip(token_logprobs[order].split(counts), token_entropies[order].split(counts))):
        rows.append({"index": index, **sequence_confidence(lp.tolist(), ent.tolist()).to_dict()})
    return rows


def evaluate_model(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    num_bins: int = NUM_BINS,
    num_samples: int = 3,
    sample_prompts: Sequence[str] | None = None,
    sample_max_new_tokens: int = 48,
    seed: int = 0,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    dataset_info: dict | None = None,
    show_progress: bool = False,
) -> dict:
    """Perplexity, bits per byte, calibration and sample generations of `model` on `texts` (see the module docstring
    for the exact accounting). `block_size` defaults to the model's context length (at most 2048), `stride` to half
    of it. With `output_dir`, writes `eval_results.json` and `reliability.png` there. `dataset_info` (name, split...)
    is recorded under "dataset". Returns the results dict (the contents of `eval_results.json`)."""
    texts, windows, block_size, stride, prefix, num_tokens = prepare_windows(model, tokenizer, texts, block_size,
                                                                              stride)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    started = time.perf_counter()

    was_training = model.training
    model.eval()
    nll = brier = 0.0
    confidences, correct, token_logprobs, token_entropies, owners = [], [], [], [], []
    batches = range(0, len(windows), batch_size)
    with torch.inference_mode():
        for i in tqdm(batches, desc="eval", disable=not show_progress):
            batch = windows[i:i + batch_size]
            input_ids, attention_mask, targets = batch_tensors(batch)
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                           use_cache=False).logits
            scored = targets != -100
            owner = torch.tensor([w[2] for w in batch])[:, None].expand_as(targets)[scored]
            owners.append(owner)
            for row_logits, target in zip(logits[scored.to(logits.device)].split(4096),
                                          targets[scored].to(logits.device).split(4096)):
                # fp32 softmax (the per-token terms are summed in fp64 below), in chunks to bound memory
                logprobs = torch.log_softmax(row_logits.float(), dim=-1)
                probs = logprobs.exp()
                target_logprobs = logprobs.gather(-1, target[:, None]).squeeze(-1)
                nll -= target_logprobs.double().sum().item()
                brier += brier_per_row(probs, target).double().sum().item()
                top_p, top_i = probs.max(-1)
                confidences.append(top_p.double().cpu())
                correct.append((top_i == target).cpu())
                token_logprobs.append(target_logprobs.double().cpu())
                token_entropies.append(-(probs * logprobs).sum(-1).double().cpu())
    confidences, correct = torch.cat(confidences), torch.cat(correct)
    assert len(confidences) == num_tokens  # every token scored exactly once
    sequences = per_sequence_confidence(torch.cat(owners), torch.cat(token_logprobs), torch.cat(token_entropies),
                                        len(texts))

    loss = nll / num_tokens
    bins = reliability_bins(confidences, correct, num_bins)
    results = {
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "dataset": {"name": None, "config": None, "split": None, "text_column": None, **(dataset_info or {}),
                    "texts": len(texts), "tokens": num_tokens, "bytes": num_bytes},
        "settings": {"block_size": block_size, "stride": stride, "batch_size": batch_size,
                     "prefix_token": tokenizer.convert_ids_to_tokens(prefix),
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
        "metrics": {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_byte": nll / (num_bytes * math.log(2)),
            "tokens_per_byte": num_tokens / num_bytes,
            "accuracy": float(correct.double().mean()),
            "ece": expected_calibration_error(confidences, correct, num_bins),
            "brier": brier / num_tokens,
            "mean_token_entropy": sum(q["mean_entropy"] * q["tokens"] for q in sequences) / num_tokens,
        },
        "calibration": {"num_bins": num_bins, "confidence": "top-1 next-token probability",
                        "brier": "multi-class over the full vocabulary", "bins": bins},
        "sequences": sequences,
        "samples": [],
    }
    if num_samples or sample_prompts:
        results["samples"], results["sample_settings"] = _sample_generations(
            model, tokenizer, texts, sample_prompts, num_samples, sample_max_new_tokens, seed)
    results["runtime_s"] = round(time.perf_counter() - started, 3)
    results["framework_versions"] = framework_versions()
    model.train(was_training)
    if output_dir is not None:
        save_results(results, output_dir)
    return results


def _sample_generations(model, tokenizer, texts, prompts, num_samples, max_new_tokens, seed):
    # default prompts: the opening words of the first evaluation texts
    prompts = list(prompts) if prompts else [" ".join(t.split()[:8]) for t in texts[:num_samples]]
    settings = {"max_new_tokens": max_new_tokens, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "seed": seed}
    samples = [{"prompt": p, "completion": generate(model, tokenizer, p, **settings)} for p in prompts]
    return samples, settings


def save_plot(draw, path) -> str | None:
    """Render `draw(file)` into `path` atomically; returns the file name, or None when matplotlib is missing."""
    png = io.BytesIO()
    try:
        draw(png)
    except ImportError:
        logger.warning("matplotlib is not installed, so %s was not drawn: pip install 'openllm-hf[train]'.",
                       Path(path).name)
        return None
    atomic.write_bytes(path, png.getvalue())
    return Path(path).name


def save_results(results: dict, output_dir) -> Path:
    """Write `eval_results.json` and the reliability diagram into `output_dir`, each atomically; returns the JSON
    path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "calibration" in results:
        bins = results["calibration"]["bins"]
        results["reliability_diagram"] = save_plot(lambda png: plot_reliability_diagram(bins, png),
                                                   output_dir / RELIABILITY_FILE)
    return atomic.write_json(output_dir / RESULTS_FILE, results, ensure_ascii=False)
