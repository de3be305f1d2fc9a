"""Intrinsic evaluation of a causal LM: perplexity, bits per byte, next-token calibration, and sample generations.

    openllm eval MODEL --dataset held_out.jsonl --output-dir MODEL     # writes eval_results.json, reliability.png
    openllm eval MODEL --dataset Salesforce/wikitext --dataset-config wikitext-2-raw-v1 --split test --json

Accounting, so the numbers are exact and comparable across tokenizers:
- Each text is scored on its own: its tokens (no special tokens added) are preceded by one BOS token (EOS when the
  tokenizer has no BOS) and every text token is predicted exactly once. Texts longer than `block_size` are scored with
  overlapping windows: each window re-reads up to `block_size - stride` tokens of context and scores `stride` new
  ones, so every token after the first window has at least `block_size - stride` tokens of context.
- `loss` is the mean negative log-likelihood in nats per scored token, `perplexity = exp(loss)`, and
  `bits_per_byte = loss * tokens / (bytes * ln 2)` where `bytes` counts the UTF-8 bytes of the evaluated texts.
- Calibration uses the top-1 next-token prediction: `ece` is the expected calibration error over 15 equal-width
  confidence bins, `accuracy` the top-1 accuracy, and `brier` the multi-class Brier score over the full vocabulary,
  sum_k (p_k - 1[k = target])^2, averaged over scored tokens (0 is perfect, 2 the worst).
"""

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
RELIABILITY_FILE = "reliability.png"
NUM_BINS = 15
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------
def load_eval_texts(
    dataset: str,
    *,
    text_column: str = "text",
    split: str | None = None,
    dataset_config: str | None = None,
    max_samples: int | None = None,
) -> tuple[list[str], str]:
    """(non-empty texts, split used) from a local .txt/.jsonl/.json/.csv/.parquet file, a local dataset folder, or a
    Hub dataset id. A .txt file holds one text per blank-line-separated paragraph. Without `split`, the first of
    validation/test/train that exists is used. `max_samples` keeps the first N non-empty texts."""
    path = Path(dataset)
    if path.suffix in LOCAL_FORMATS and not path.is_file():
        raise FileNotFoundError(f"Dataset file {dataset!r} does not exist.")
    if path.is_file():
        if path.suffix not in LOCAL_FORMATS:
            raise ValueError(f"Cannot read {dataset!r}: local files must end in {', '.join(LOCAL_FORMATS)}.")
        if split not in (None, "train"):
            raise ValueError(f"A local file has a single split, 'train'; drop --split {split} or pass a dataset "
                             "folder or Hub id that has that split.")
        split = "train"
        if path.suffix == ".txt":
            rows = [{text_column: block} for block in path.read_text(encoding="utf-8").split("\n\n")]
            return _clean_texts(rows, text_column, dataset, split, max_samples, columns=[text_column]), split
        rows = _load_dataset(LOCAL_FORMATS[path.suffix], None, split, max_samples, data_files=str(path))
    else:
        if split is None:
            from datasets import get_dataset_split_names

            names = get_dataset_split_names(dataset, dataset_config)
            split = next((s for s in ("validation", "test", "train") if s in names), names[0])
        rows = _load_dataset(dataset, dataset_config, split, max_samples)
    return _clean_texts(rows, text_column, dataset, split, max_samples, columns=rows.column_names), split


def _load_dataset(path, name, split, max_samples, **kwargs):
    from datasets import load_dataset

    # streaming reads only the rows a capped evaluation needs, instead of downloading the whole split first
    return load_dataset(path, name, split=split, streaming=max_samples is not None, **kwargs)


def _clean_texts(rows, text_column, dataset, split, max_samples, columns) -> list[str]:
    texts = []
    for row in rows:
        columns = columns or list(row)  # a streamed dataset may only know its columns once it yields a row
        if text_column not in columns:
            raise ValueError(f"Column {text_column!r} is not in {dataset!r} (split {split!r}); its columns are "
                             f"{', '.join(columns)}. Pass the right one with --text-column.")
        text = row[text_column]
        if not isinstance(text, str):
            raise TypeError(f"Column {text_column!r} of {dataset!r} holds {type(text).__name__}, not text. Pass a "
                             "column of strings with --text-column.")
        if text.strip():
            texts.append(text)
            if max_samples is not None and len(texts) >= max_samples:
                break
    if not texts:
        raise ValueError(f"{dataset!r} (split {split!r}, column {text_column!r}) has no non-empty text to evaluate.")
    return texts


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


# ---------------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------------
def reliability_bins(confidences, correct, num_bins: int = NUM_BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence and accuracy of the top-1 predictions."""
    import torch

    confidences = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    correct = torch.as_tensor(correct, dtype=torch.float64).flatten()
    index = (torch.ceil(confidences * num_bins).long() - 1).clamp(0, num_bins - 1)
    count = torch.bincount(index, minlength=num_bins).double()
    conf_sum = torch.bincount(index, weights=confidences, minlength=num_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=num_bins)
    bins = []
    for b in range(num_bins):
        n = int(count[b])
        bins.append({"lower": b / num_bins, "upper": (b + 1) / num_bins, "count": n,
                     "confidence": float(conf_sum[b] / n) if n else None,
                     "accuracy": float(correct_sum[b] / n) if n else None})
    return bins


def expected_calibration_error(confidences, correct, num_bins: int = NUM_BINS) -> float:
    """ECE = sum over bins of (bin count / total) * |accuracy - mean confidence| (Guo et al., 2017)."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("expected_calibration_error needs at least one prediction.")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


def brier_score(probs, targets) -> float:
    """Multi-class Brier score, sum_k (p_k - 1[k = target])^2, averaged over rows of `probs` (N, num_classes)."""
    import torch

    probs = torch.as_tensor(probs, dtype=torch.float64)
    targets = torch.as_tensor(targets, dtype=torch.long)
    return float(_brier_per_row(probs, targets).mean())


def _brier_per_row(probs, targets):
    # expanded so it never materialises the one-hot matrix: sum p^2 - 2 p_target + 1
    return (probs * probs).sum(-1) - 2 * probs.gather(-1, targets[:, None]).squeeze(-1) + 1


def draw_reliability(top, bottom, bins: list[dict], title: str) -> None:
    """Draw a reliability diagram on two matplotlib axes: accuracy and gap per bin on `top`, counts on `bottom`."""
    total = sum(b["count"] for b in bins)
    ece = sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    width = bins[0]["upper"] - bins[0]["lower"]
    lowers = [b["lower"] for b in bins]
    accuracies = [b["accuracy"] or 0.0 for b in bins]
    gaps = [(b["confidence"] - b["accuracy"]) if b["count"] else 0.0 for b in bins]
    top.bar(lowers, accuracies, width=width, align="edge", edgecolor="black", label="accuracy")
    top.bar(lowers, gaps, bottom=accuracies, width=width, align="edge", color="tab:red", alpha=0.3,
            label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="top-1 accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title}\n(ECE {ece:.4f}, {total:,} tokens)", fontsize=10)
    top.legend(loc="upper left")
    bottom.bar(lowers, [b["count"] for b in bins], width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set(xlabel="top-1 confidence", ylabel="tokens", yscale="log" if any(b["count"] for b in bins) else "linear")


def plot_reliability_diagram(bins: list[dict], path, title: str = "Next-token calibration") -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with the token count per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_reliability(top, bottom, bins, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------
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
    import torch

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
    from .confidence import sequence_confidence

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
    import torch
    from tqdm.auto import tqdm

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
                brier += _brier_per_row(probs, target).double().sum().item()
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
    from .generation import generate

    # default prompts: the opening words of the first evaluation texts
    prompts = list(prompts) if prompts else [" ".join(t.split()[:8]) for t in texts[:num_samples]]
    settings = {"max_new_tokens": max_new_tokens, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "seed": seed}
    samples = [{"prompt": p, "completion": generate(model, tokenizer, p, **settings)} for p in prompts]
    return samples, settings


def framework_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("openllm-hf", "transformers", "torch", "tokenizers", "datasets", "accelerate", "peft", "trl"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    if "openllm-hf" not in versions:  # running from a source checkout
        from .. import __version__

        versions["openllm-hf"] = __version__
    return versions


def save_results(results: dict, output_dir) -> Path:
    """Write `eval_results.json` and the reliability diagram into `output_dir`, each atomically; returns the JSON
    path."""
    import io

    from .. import atomic

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "calibration" in results:
        results["reliability_diagram"] = None
        try:
            png = io.BytesIO()
            plot_reliability_diagram(results["calibration"]["bins"], png)
            atomic.write_bytes(output_dir / RELIABILITY_FILE, png.getvalue())
            results["reliability_diagram"] = RELIABILITY_FILE
        except ImportError:
            logger.warning("matplotlib is not installed, so no reliability diagram was drawn: "
                           "`pip install matplotlib` (or openllm-hf[train]).")
    if "answers" in results:
        from .answers import RISK_COVERAGE_FILE, save_risk_coverage

        try:
            png = io.BytesIO()
            save_risk_coverage(results["answers"], png)
            atomic.write_bytes(output_dir / RISK_COVERAGE_FILE, png.getvalue())
            results["risk_coverage_plot"] = RISK_COVERAGE_FILE
        except ImportError:
            logger.warning("matplotlib is not installed, so no risk-coverage curve was drawn.")
    return atomic.write_json(output_dir / RESULTS_FILE, results, ensure_ascii=False)


def format_results(results: dict) -> str:
    """A table for people."""
    lines = [str(results["model"])]
    if "metrics" in results:
        lines = _format_metrics(results)
    if "uncertainty" in results:
        u = results["uncertainty"]
        lines += ["", f"uncertainty (ensemble of {u['members']}, nats/token): total {u['total']:.4f} = aleatoric "
                  f"{u['aleatoric']:.4f} + epistemic {u['epistemic']:.4f}"]
    if "lm_eval" in results:
        from .harness import format_lm_eval

        lines.append(format_lm_eval(results["lm_eval"]))
    if "answers" in results:
        a = results["answers"]
        lines += ["", f"answers to {a['questions']} held-out questions ({a['tasks']}): accuracy {a['accuracy']:.4f}",
                  f"AURC {a['aurc']:.4f} ranked by confidence (random ranking {a['random_aurc']:.4f}, oracle "
                  f"{a['oracle_aurc']:.4f}); lower is better"]
    return "\n".join(lines)


def _format_metrics(results: dict) -> list[str]:
    m, d, s = results["metrics"], results["dataset"], results["settings"]
    name = (d["name"] or "texts") + (f" ({d['split']})" if d["split"] else "")
    lines = [
        f"{results['model']} on {name}: {d['texts']:,} texts, {d['tokens']:,} tokens, {d['bytes']:,} bytes",
        f"block size {s['block_size']}, stride {s['stride']}, {s['dtype']}, {results['runtime_s']:.1f} s",
        "",
        f"{'metric':<16}{'value':>12}",
        f"{'-' * 28}",
        f"{'loss (nats/tok)':<16}{m['loss']:>12.4f}",
        f"{'perplexity':<16}{m['perplexity']:>12.3f}",
        f"{'bits per byte':<16}{m['bits_per_byte']:>12.4f}",
        f"{'top-1 accuracy':<16}{m['accuracy']:>12.4f}",
        f"{'ECE (15 bins)':<16}{m['ece']:>12.4f}",
        f"{'Brier':<16}{m['brier']:>12.4f}",
    ]
    for sample in results.get("samples", []):
        lines += ["", f"prompt      {sample['prompt']}", f"completion  {sample['completion']}"]
    return lines


def add_arguments(parser):
    parser.add_argument("model", help="model folder (save_pretrained + tokenizer) or Hub id")
    parser.add_argument("--dataset", help="held-out texts: a .txt/.jsonl/.json/.csv/.parquet file, a folder or Hub id")
    parser.add_argument("--dataset-config", help="Hub dataset configuration, e.g. wikitext-2-raw-v1")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--split", help="default: the first of validation, test, train that exists")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N non-empty texts")
    parser.add_argument("--block-size", type=int, help="tokens per window (default: the model's context, ≤ 2048)")
    parser.add_argument("--stride", type=int, help="new tokens scored per window (default: block size / 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=3, help="sample generations to include (0 for none)")
    parser.add_argument("--prompt", action="append", dest="prompts", help="prompt of a sample generation (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample generations")
    parser.add_argument("--output-dir", help=f"write {RESULTS_FILE} and {RELIABILITY_FILE} here (e.g. the model)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    harness = parser.add_argument_group("lm-evaluation-harness (pip install 'openllm-hf[eval]')")
    harness.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. openllm_heldout,openllm_synthetic_mc,"
                         "openllm_synthetic_gen (offline, shipped) or hellaswag,arc_easy,gsm8k,wikitext (Hub)")
    harness.add_argument("--include-path", action="append", help="a folder of your own task YAMLs (repeatable)")
    harness.add_argument("--limit", type=int, help="at most N examples per lm-eval task")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples per lm-eval prompt (default: the task's)")
    parser.add_argument("--ensemble", action="append", metavar="MODEL", help="another checkpoint with the same "
                        "tokenizer (repeatable): splits uncertainty on --dataset into aleatoric and epistemic")
    answers = parser.add_argument_group("answer accuracy and selective prediction")
    answers.add_argument("--answers", metavar="TASKS", help="answer held-out synthetic questions (openllm:mix, "
                         "openllm:addition, or addition,parity,reverse) and rank them by confidence (AURC)")
    answers.add_argument("--answers-size", type=int, default=200, help="number of questions (default 200)")
    answers.add_argument("--chat", action="store_true", help="ask the questions through the chat template")


def run(args) -> int:
    from .generation import load_causal_lm

    try:
        if args.dataset is None and args.tasks is None and args.answers is None:
            raise ValueError("Nothing to evaluate: pass --dataset (held-out texts), --tasks (lm-eval tasks) and/or "
                             "--answers (checkable questions).")
        if args.max_samples is not None and args.max_samples < 1:
            raise ValueError(f"--max-samples must be at least 1, got {args.max_samples}.")
        texts = None
        if args.dataset is not None:
            texts, split = load_eval_texts(args.dataset, text_column=args.text_column, split=args.split,
                                           dataset_config=args.dataset_config, max_samples=args.max_samples)
        model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=args.dtype)
        if texts is not None:
            info = {"name": args.dataset, "config": args.dataset_config, "split": split,
                    "text_column": args.text_column}
            results = evaluate_model(model, tokenizer, texts, block_size=args.block_size, stride=args.stride,
                                     batch_size=args.batch_size, num_samples=args.num_samples,
                                     sample_prompts=args.prompts, seed=args.seed, model_name=args.model,
                                     dataset_info=info, show_progress=not args.json and sys.stderr.isatty())
        elif args.output_dir and (Path(args.output_dir) / RESULTS_FILE).is_file():
            # lm-eval or answers alone: their results join the held-out numbers already there
            results = json.loads((Path(args.output_dir) / RESULTS_FILE).read_text(encoding="utf-8"))
        else:
            results = {"model": args.model, "framework_versions": framework_versions()}
        if args.ensemble:
            from .uncertainty import ensemble_uncertainty, load_ensemble

            if texts is None:
                raise ValueError("--ensemble measures uncertainty on held-out texts: pass them with --dataset.")
            members = [model] + load_ensemble(args.ensemble, tokenizer, device=args.device, dtype=args.dtype)
            results["uncertainty"] = ensemble_uncertainty(members, tokenizer, texts, block_size=args.block_size,
                                                          stride=args.stride, batch_size=args.batch_size)
            results["uncertainty"]["ensemble"] = [args.model] + args.ensemble
        if args.tasks is not None:
            from .harness import run_lm_eval

            # `openllm_heldout` scores the same texts as `--dataset` (a local file), so the two can be compared
            metadata = {"data_files": args.dataset, "text_column": args.text_column} \
                if args.dataset and Path(args.dataset).is_file() else {}
            results["lm_eval"] = run_lm_eval(model, tokenizer, args.tasks, include_path=args.include_path,
                                             limit=args.limit, batch_size=args.batch_size, metadata=metadata,
                                             num_fewshot=args.num_fewshot, seed=args.seed)
        if args.answers is not None:
            from .answers import evaluate_answers, synthetic_questions

            results["answers"] = evaluate_answers(model, tokenizer,
                                                  synthetic_questions(args.answers, args.answers_size, args.seed),
                                                  chat=args.chat, show_progress=not args.json and sys.stderr.isatty())
            results["answers"]["tasks"] = args.answers
        if args.output_dir is not None:
            save_results(results, args.output_dir)
    except (OSError, ValueError, TypeError) as error:
        print(f"openllm eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2, ensure_ascii=False) if args.json else format_results(results))
    return 0
