"""Temperature scaling (Guo et al., 2017): one scalar T that divides the next-token logits, fitted on held-out text
by minimising the negative log-likelihood with LBFGS, then stored in the model's config so every use of the model
(generation, `openllm eval`, lm-evaluation-harness, the server, ONNX export) sees the calibrated distribution.

    openllm calibrate MODEL --dataset held_out.jsonl                    # in place
    openllm calibrate MODEL --dataset held_out.jsonl --output-dir MODEL-calibrated

The held-out texts are split in two (`--fit-fraction`, shuffled with `--seed`): T is fitted on the first part and
NLL, ECE, Brier and top-1 accuracy are reported before and after on the second, so the gain is measured on tokens the
fit never saw. The fit always starts from the raw logits (the temperature already in the config is ignored while
fitting), so calibrating a calibrated model again gives the same T. Argmax (greedy) predictions never change.

The output folder gets `config.json` with `logits_temperature`, `calibration.json` (T and the numbers before/after)
and `calibration.png` (both reliability diagrams side by side). It is written atomically.
"""

import json
import logging
import math
import random
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import atomic
from ..data.text import load_eval_texts
from ..models.loading import add_loading_arguments, load_causal_lm
from .metrics import NUM_BINS, brier_per_row, draw_reliability, expected_calibration_error, reliability_bins
from .perplexity import batch_tensors, prepare_windows

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_PLOT = "calibration.png"
# modeling files a calibrated folder must carry so that `trust_remote_code` loading applies the temperature
CODE_FILES = ("configuration_openllm.py", "modeling_openllm.py")


def head_inputs(model, tokenizer, texts, *, block_size=None, stride=None, batch_size: int = 8):
    """(hidden, targets): the input of the output layer (`get_output_embeddings()`) at every scored position of
    `texts` (the accounting of `openllm eval`), and the token each position predicts. Fitting a temperature then
    only needs the output layer, not the whole model."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output layer (get_output_embeddings() is None), so its "
                         "logits cannot be temperature-scaled.")
    _, windows, *_ = prepare_windows(model, tokenizer, texts, block_size, stride)
    captured = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    hidden, targets = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(windows), batch_size):
                input_ids, attention_mask, batch_targets = batch_tensors(windows[i:i + batch_size])
                captured.clear()
                model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                      use_cache=False)
                scored = batch_targets != -100
                hidden.append(captured[0][scored.to(captured[0].device)].float())
                targets.append(batch_targets[scored].to(captured[0].device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(hidden), torch.cat(targets)


def _chunks(hidden, targets, size: int = 4096):
    return zip(hidden.split(size), targets.split(size))


class _Head:
    """The output layer with the model's logit soft-capping, if any: calibration fits the temperature the forward
    pass applies after both."""

    def __init__(self, model):
        self.linear = model.get_output_embeddings()
        self.weight = self.linear.weight
        self.logit_softcapping = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, hidden):
        return self.linear(hidden)


def _raw_logits(head, hidden):
    with torch.no_grad():
        logits = head(hidden.to(head.weight.dtype)).float()
        cap = getattr(head, "logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def fit_temperature(head, hidden, targets, max_iter: int = 100) -> float:
    """The T > 0 that minimises the mean NLL of `targets` under softmax(head(hidden) / T), by LBFGS on log T."""
    log_t = torch.zeros((), requires_grad=True, device=hidden.device)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")
    n = len(targets)

    def closure():
        optimizer.zero_grad()
        total = 0.0
        for h, y in _chunks(hidden, targets):
            loss = F.cross_entropy(_raw_logits(head, h) / log_t.exp(), y, reduction="sum") / n
            loss.backward()  # chunk by chunk: the (tokens × vocab) logits never exist at once
            total += loss.item()
        return torch.tensor(total)

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        raise RuntimeError("Temperature scaling diverged; check that the held-out texts are not empty or degenerate.")
    return temperature


def scaled_metrics(head, hidden, targets, temperature: float, num_bins: int = NUM_BINS) -> dict:
    """NLL (nats/token), top-1 accuracy, ECE, Brier and reliability bins of softmax(head(hidden) / T)."""
    nll = brier = 0.0
    confidences, correct = [], []
    for h, y in _chunks(hidden, targets):
        logprobs = torch.log_softmax(_raw_logits(head, h) / temperature, dim=-1)
        probs = logprobs.exp()
        nll -= logprobs.gather(-1, y[:, None]).double().sum().item()
        brier += brier_per_row(probs, y).double().sum().item()
        top_p, top_i = probs.max(-1)
        confidences.append(top_p.double().cpu())
        correct.append((top_i == y).cpu())
    confidences, correct = torch.cat(confidences), torch.cat(correct)
    n = len(targets)
    return {"nll": nll / n, "perplexity": math.exp(nll / n), "accuracy": float(correct.double().mean()),
            "ece": expected_calibration_error(confidences, correct, num_bins), "brier": brier / n,
            "bins": reliability_bins(confidences, correct, num_bins)}


def split_texts(texts, fit_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    if not 0 < fit_fraction < 1:
        raise ValueError(f"--fit-fraction must be between 0 and 1 (exclusive), got {fit_fraction}: the rest of the "
                         "texts measure the gain.")
    if len(texts) < 2:
        raise ValueError(f"Calibration needs at least 2 held-out texts (one to fit on, one to measure on), got "
                         f"{len(texts)}.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    k = min(len(texts) - 1, max(1, round(fit_fraction * len(texts))))
    return [texts[i] for i in order[:k]], [texts[i] for i in order[k:]]


def calibrate_model(model, tokenizer, texts, *, fit_fraction: float = 0.5, seed: int = 0, block_size=None,
                    stride=None, batch_size: int = 8, num_bins: int = NUM_BINS) -> dict:
    """Fit the temperature on part of `texts` and measure on the rest, before (the raw logits, T = 1) and after;
    returns the report (`temperature`, `before`, `after`, token counts). The model is not modified."""
    texts = [t for t in texts if t.strip()]
    fit_texts, eval_texts = split_texts(texts, fit_fraction, seed)
    head = _Head(model)
    kwargs = dict(block_size=block_size, stride=stride, batch_size=batch_size)
    fit_hidden, fit_targets = head_inputs(model, tokenizer, fit_texts, **kwargs)
    eval_hidden, eval_targets = head_inputs(model, tokenizer, eval_texts, **kwargs)
    temperature = fit_temperature(head, fit_hidden, fit_targets)
    return {
        "temperature": temperature,
        "fit": {"texts": len(fit_texts), "tokens": len(fit_targets),
                "nll_before": scaled_metrics(head, fit_hidden, fit_targets, 1.0)["nll"],
                "nll_after": scaled_metrics(head, fit_hidden, fit_targets, temperature)["nll"]},
        "eval": {"texts": len(eval_texts), "tokens": len(eval_targets)},
        "before": scaled_metrics(head, eval_hidden, eval_targets, 1.0, num_bins),
        "after": scaled_metrics(head, eval_hidden, eval_targets, temperature, num_bins),
        "settings": {"fit_fraction": fit_fraction, "seed": seed, "num_bins": num_bins, "method":
                     "temperature scaling: LBFGS on log T minimising next-token NLL"},
    }


def plot_calibration(report: dict, path) -> Path:
    """Reliability diagrams before and after temperature scaling, side by side."""
    import matplotlib  # optional: the train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the train extra

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for column, key, t in ((0, "before", 1.0), (1, "after", report["temperature"])):
        m = report[key]
        draw_reliability(axes[0, column], axes[1, column], m["bins"],
                         f"{key.capitalize()} (T = {t:.3f}): NLL {m['nll']:.3f}, Brier {m['brier']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def format_report(report: dict) -> str:
    b, a = report["before"], report["after"]
    lines = [f"temperature 1 -> {report['temperature']:.4f} (fitted on "
             f"{report['fit']['tokens']:,} tokens; measured on {report['eval']['tokens']:,} other tokens)", "",
             f"{'metric':<16}{'before':>10}{'after':>10}", "-" * 36]
    for key, name in (("nll", "NLL (nats/tok)"), ("ece", "ECE (15 bins)"), ("brier", "Brier"),
                      ("accuracy", "top-1 accuracy")):
        lines.append(f"{name:<16}{b[key]:>10.4f}{a[key]:>10.4f}")
    return "\n".join(lines)


def write_calibrated_folder(source, output, report: dict) -> Path:
    """Copy the model folder `source` to `output` (or rewrite it in place) with the fitted temperature in
    config.json, calibration.json and calibration.png, atomically."""
    source, output = Path(source), Path(output)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    package_models = Path(__file__).resolve().parents[1] / "models"
    with atomic.folder(output) as tmp:
        for item in source.iterdir():
            if item.name.startswith(".") or item.name in (CALIBRATION_FILE, CALIBRATION_PLOT):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        config["logits_temperature"] = report["temperature"]
        atomic.write_json(tmp / "config.json", config)
        # a folder saved before temperature scaling existed carries modeling code that would ignore the field
        for name in CODE_FILES:
            if (tmp / name).is_file():
                shutil.copy2(package_models / name, tmp / name)
        atomic.write_json(tmp / CALIBRATION_FILE, report, ensure_ascii=False)
        try:
            plot_calibration(report, tmp / CALIBRATION_PLOT)
        except ImportError:
            logger.warning("matplotlib is not installed, so no reliability diagrams were drawn: `pip install "
                           "matplotlib`.")
    return output


def add_arguments(parser):
    parser.add_argument("model", help="OpenLLM model folder (save_pretrained + tokenizer)")
    parser.add_argument("--dataset", required=True, help="held-out texts: a .txt/.jsonl/.json/.csv/.parquet file, a "
                        "folder or Hub id (not the training data)")
    parser.add_argument("--dataset-config", help="Hub dataset configuration, e.g. wikitext-2-raw-v1")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--split", help="default: the first of validation, test, train that exists")
    parser.add_argument("--max-samples", type=int, help="use only the first N non-empty texts")
    parser.add_argument("--fit-fraction", type=float, default=0.5,
                        help="share of the texts the temperature is fitted on; the rest measure before/after")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/measure split")
    parser.add_argument("--block-size", type=int, help="tokens per window (default: the model's context, ≤ 2048)")
    parser.add_argument("--stride", type=int, help="new tokens scored per window (default: block size / 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", help="write the calibrated model here (default: rewrite MODEL in place)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_loading_arguments(parser, dtype=False)  # temperature is fitted in float32


def run(args) -> int:
    if not Path(args.model).is_dir():
        raise ValueError(f"{args.model!r} is not a local model folder; download it first (e.g. `hf download "
                         f"{args.model} --local-dir DIR`) so the calibrated copy can be written.")
    config = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8")) \
        if (Path(args.model) / "config.json").is_file() else {}
    if config and config.get("model_type") != "openllm":
        raise ValueError(f"{args.model} is a {config.get('model_type')!r} model, whose config has no temperature "
                         "field its forward pass reads; temperature scaling is stored in OpenLLM models only.")
    if args.max_samples is not None and args.max_samples < 2:
        raise ValueError(f"--max-samples must be at least 2, got {args.max_samples}.")
    texts, _ = load_eval_texts(args.dataset, text_column=args.text_column, split=args.split,
                               dataset_config=args.dataset_config, max_samples=args.max_samples)
    model, tokenizer = load_causal_lm(args.model, device=args.device, dtype="float32", revision=args.revision,
                                      trust_remote_code=args.trust_remote_code)
    report = calibrate_model(model, tokenizer, texts, fit_fraction=args.fit_fraction, seed=args.seed,
                             block_size=args.block_size, stride=args.stride, batch_size=args.batch_size)
    report["dataset"] = {"name": args.dataset, "config": args.dataset_config, "split": args.split,
                         "text_column": args.text_column}
    output = write_calibrated_folder(args.model, args.output_dir or args.model, report)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
        print(f"\nWrote {output} (config.json logits_temperature, {CALIBRATION_FILE}, {CALIBRATION_PLOT}).")
    if (output / "eval_results.json").is_file():
        print("Note: eval_results.json there was measured before calibration; rerun `openllm eval` to update it.",
              file=sys.stderr)
    return 0
