"""Post-hoc calibration of the next-token distribution: temperature, Platt or beta scaling, chosen by held-out NLL and
stored in the model's config, so every use of the model (generation, `openllm eval`, lm-evaluation-harness, the
server's log-probabilities and confidence, ONNX export) sees the calibrated distribution.

    openllm calibrate MODEL --dataset held_out.jsonl                    # in place
    openllm calibrate MODEL --dataset held_out.jsonl --output-dir MODEL-calibrated --methods temperature

The candidates map the logits z of the output layer (after its soft-capping, if any); `calibrate_logits` in
`modeling_openllm.py` applies them, in the model's forward pass and here alike:
- `none`: z unchanged.
- `temperature` (Guo et al., 2017): z / T. One parameter, stored as `logits_temperature`. Argmax never changes.
- `platt`: a z + b, Platt's affine map for a softmax: one scale a (stored as the temperature 1 / a) and one bias per
  token (`logits_bias`; a single bias would cancel in the softmax). It corrects a model that over- or under-predicts
  some tokens whatever the context, which no temperature can. The biases have a standard normal prior (the fit
  minimises the summed NLL plus |b|² / 2), so a token the texts barely show keeps a bias near 0. Argmax can change.
- `beta` (Kull et al., 2017): the top-1 probability p becomes p' = 1 / (1 + 1 / (e^c p^a / (1 - p)^b)) with a, b ≥ 0,
  and the other tokens share 1 - p' in their old proportions, so the result is still a distribution over the whole
  vocabulary. Its NLL is the old NLL plus the change in binary log-loss of "the top-1 token is the next token", so
  fitting it on next-token NLL is exactly Kull et al.'s logistic regression on (ln p, -ln(1 - p)); a coefficient
  that comes out negative is fixed at 0 and the rest refitted, as they do. Stored as `beta_calibration: [a, b, c]`.
  The forward pass then returns the log-probabilities of that distribution as its logits: beta calibration is not a
  correction of reported confidences only, it is the distribution generation samples, evaluation scores and the
  server reports, so the method chosen by NLL is the one every use sees. Argmax changes only where p' falls below
  the runner-up's rescaled probability.

The held-out texts are split in two (`--fit-fraction`, shuffled with `--seed`). On the first part every method is
scored by K-fold cross-validation over texts (`--folds`: fitted on K - 1 folds, NLL measured on the remaining one)
and the lowest cross-validated NLL wins (on a tie, the method with fewer parameters); every method is then refitted on
the whole first part. On the second part, which neither the fits nor the choice saw, NLL, ECE, Brier and top-1
accuracy are reported before and after each method. The fits always start from the raw logits (any calibration
already in the config is ignored), so calibrating a calibrated model again gives the same result.

The output folder gets the chosen method's fields in `config.json` (the other calibration fields reset to their
defaults, which mean no calibration), `calibration.json` (the report, including those fields) and `calibration.png`
(reliability diagrams before and after each method). It is written atomically.
"""

import json
import logging
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .. import atomic
from ..data.text import add_text_arguments, load_args_texts
from ..models.loading import add_loading_arguments, load_causal_lm
from ..models.modeling_openllm import calibrate_logits
from .metrics import NUM_BINS, brier_per_row, draw_reliability, expected_calibration_error, reliability_bins
from .perplexity import batch_tensors, prepare_windows

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_PLOT = "calibration.png"
# modeling files a calibrated folder must carry so that `trust_remote_code` loading applies the calibration
CODE_FILES = ("configuration_openllm.py", "modeling_openllm.py")
# fewest parameters first: on equal held-out NLL the simpler method wins
METHODS = ("none", "temperature", "beta", "platt")
METHOD_NAMES = {"none": "none", "temperature": "temperature scaling", "beta": "beta calibration",
                "platt": "Platt scaling"}


def head_inputs(model, tokenizer, texts, *, block_size=None, stride=None, batch_size: int = 8):
    """(hidden, targets): the input of the output layer (`get_output_embeddings()`) at every scored position of
    `texts` (the accounting of `openllm eval`), and the token each position predicts. Fitting a calibration then
    only needs the output layer, not the whole model."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output layer (get_output_embeddings() is None), so its "
                         "logits cannot be calibrated.")
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
    """The output layer with the model's logit soft-capping, if any: calibration fits the map the forward pass
    applies after both."""

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


# ---------------------------------------------------------------------------------------------------------------------
# The candidate maps and their fits
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """One map of the logits, in the config's terms (see `calibrate_logits`); the defaults are no calibration."""

    method: str = "none"
    temperature: float = 1.0
    bias: Optional[torch.Tensor] = None
    beta: Optional[list] = None

    def __call__(self, logits):
        return calibrate_logits(logits, self.temperature, self.bias, self.beta)

    def config(self) -> dict:
        """The config.json fields that make the model's forward pass apply it."""
        return {"logits_temperature": self.temperature,
                "logits_bias": None if self.bias is None else self.bias.tolist(),
                "beta_calibration": self.beta}

    def parameters(self) -> dict:
        """Its parameters for the report, the per-token biases summarised."""
        if self.method == "beta":
            return dict(zip("abc", self.beta))
        parameters = {} if self.method == "none" else {"temperature": self.temperature}
        if self.bias is not None:
            bias = self.bias.double()
            parameters["bias"] = {"min": float(bias.min()), "max": float(bias.max()), "std": float(bias.std()),
                                  "most_raised": bias.topk(min(5, len(bias))).indices.tolist(),
                                  "most_lowered": (-bias).topk(min(5, len(bias))).indices.tolist()}
        return parameters


def _lbfgs(params, max_iter: int):
    return torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                             line_search_fn="strong_wolfe")


def fit_temperature(head, hidden, targets, max_iter: int = 100) -> float:
    """The T > 0 that minimises the mean NLL of `targets` under softmax(head(hidden) / T), by LBFGS on log T."""
    log_t = torch.zeros((), requires_grad=True, device=hidden.device)
    optimizer = _lbfgs([log_t], max_iter)
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


def fit_platt(head, hidden, targets, max_iter: int = 200) -> tuple[float, torch.Tensor]:
    """(T, b) minimising the NLL of `targets` under softmax(head(hidden) / T + b) plus |b|² / 2 (a standard normal
    prior on each token's bias), by LBFGS on log T and b."""
    log_t = torch.zeros((), requires_grad=True, device=hidden.device)
    bias = torch.zeros(head.weight.shape[0], requires_grad=True, device=hidden.device)
    optimizer = _lbfgs([log_t, bias], max_iter)
    n = len(targets)

    def closure():
        optimizer.zero_grad()
        total = 0.0
        for h, y in _chunks(hidden, targets):
            loss = F.cross_entropy(_raw_logits(head, h) / log_t.exp() + bias, y, reduction="sum") / n
            loss.backward()
            total += loss.item()
        prior = bias.square().sum() / (2 * n)
        prior.backward()
        return torch.tensor(total + prior.item())

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not (math.isfinite(temperature) and torch.isfinite(bias).all()):
        raise RuntimeError("Platt scaling diverged; check that the held-out texts are not empty or degenerate.")
    return temperature, bias.detach()


def top1_features(head, hidden, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ln p, ln(1 - p), top-1 correct) per position, p the top-1 probability of the raw logits: all that beta
    calibration's fit needs."""
    log_p, log_rest, correct = [], [], []
    for h, y in _chunks(hidden, targets):
        logprobs = torch.log_softmax(_raw_logits(head, h), dim=-1)
        top = logprobs.argmax(-1, keepdim=True)
        log_p.append(logprobs.gather(-1, top).squeeze(-1))
        log_rest.append(torch.logsumexp(logprobs.scatter(-1, top, float("-inf")), dim=-1))
        correct.append((top.squeeze(-1) == y).float())
    return torch.cat(log_p), torch.cat(log_rest), torch.cat(correct)


def _logistic_regression(features, labels, max_iter: int = 100) -> tuple[list[float], float]:
    """Weights (from 1) and intercept (from 0) minimising the mean binary log-loss, by LBFGS."""
    weights = torch.ones(features.shape[1], dtype=features.dtype, device=features.device, requires_grad=True)
    intercept = torch.zeros((), dtype=features.dtype, device=features.device, requires_grad=True)
    optimizer = _lbfgs([weights, intercept], max_iter)

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(features @ weights + intercept, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach().tolist(), float(intercept.detach())


def fit_beta(head, hidden, targets) -> list[float]:
    """[a, b, c] of beta calibration minimising the NLL of `targets`: logistic regression of "top-1 correct" on
    (ln p, -ln(1 - p)); a coefficient that comes out negative is fixed at 0 and the others refitted (Kull et al.)."""
    log_p, log_rest, correct = top1_features(head, hidden, targets)
    rows = torch.isfinite(log_rest)  # where the other tokens have no probability, the map is the identity
    features, correct = torch.stack([log_p, -log_rest], dim=-1)[rows].double(), correct[rows].double()
    active = [0, 1]
    while True:
        weights, c = _logistic_regression(features[:, active], correct)
        if min(weights) >= 0 or len(active) == 1:
            break
        del active[weights.index(min(weights))]
    coefficients = [0.0, 0.0]
    for i, w in zip(active, weights):
        coefficients[i] = max(w, 0.0)
    if not all(map(math.isfinite, coefficients + [c])):
        raise RuntimeError("Beta calibration diverged; check that the held-out texts are not empty or degenerate.")
    return coefficients + [c]


def fit_calibration(method: str, head, hidden, targets) -> Calibration:
    """Fit `method` (one of `METHODS`) to the NLL of `targets` given the output layer's inputs `hidden`."""
    if method == "none":
        return Calibration()
    if method == "temperature":
        return Calibration(method, temperature=fit_temperature(head, hidden, targets))
    if method == "platt":
        temperature, bias = fit_platt(head, hidden, targets)
        return Calibration(method, temperature=temperature, bias=bias)
    if method == "beta":
        return Calibration(method, beta=fit_beta(head, hidden, targets))
    raise ValueError(f"Unknown calibration method {method!r}; expected one of {', '.join(METHODS)}.")


def nll_sum(head, hidden, targets, calibration: Calibration) -> float:
    """Summed NLL (nats) of `targets` under the calibrated distribution."""
    total = 0.0
    for h, y in _chunks(hidden, targets):
        total += F.cross_entropy(calibration(_raw_logits(head, h)), y, reduction="sum").double().item()
    return total


def cross_validated_nll(head, folds, methods=METHODS) -> dict[str, float]:
    """Per method, the NLL per token of each fold in `folds` (a list of (hidden, targets)) under the method fitted
    on the other folds."""
    tokens = sum(len(targets) for _, targets in folds)
    scores = {}
    for method in methods:
        total = 0.0
        for k, (hidden, targets) in enumerate(folds):
            rest = [fold for i, fold in enumerate(folds) if i != k]
            fitted = fit_calibration(method, head, torch.cat([h for h, _ in rest]), torch.cat([t for _, t in rest]))
            total += nll_sum(head, hidden, targets, fitted)
        scores[method] = total / tokens
    return scores


def choose_method(scores: dict[str, float]) -> str:
    """The method with the lowest cross-validated NLL; on a tie, the one with fewer parameters."""
    return min((m for m in METHODS if m in scores), key=scores.get)


def calibrated_metrics(head, hidden, targets, calibration: Calibration, num_bins: int = NUM_BINS) -> dict:
    """NLL (nats/token), top-1 accuracy, ECE, Brier and reliability bins of the calibrated distribution."""
    nll = brier = 0.0
    confidences, correct = [], []
    for h, y in _chunks(hidden, targets):
        logprobs = torch.log_softmax(calibration(_raw_logits(head, h)), dim=-1)
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


# ---------------------------------------------------------------------------------------------------------------------
# Calibrating a model
# ---------------------------------------------------------------------------------------------------------------------


def split_texts(texts, fit_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(fit texts, measure texts): a seeded shuffle cut at `fit_fraction`, with at least two texts to fit on (the
    method is chosen by cross-validation over them) and one to measure on."""
    if not 0 < fit_fraction < 1:
        raise ValueError(f"--fit-fraction must be between 0 and 1 (exclusive), got {fit_fraction}: the rest of the "
                         "texts measure the gain.")
    if len(texts) < 3:
        raise ValueError(f"Calibration needs at least 3 held-out texts (two to fit and choose the method on, one to "
                         f"measure on), got {len(texts)}.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    k = min(len(texts) - 1, max(2, round(fit_fraction * len(texts))))
    return [texts[i] for i in order[:k]], [texts[i] for i in order[k:]]


def check_methods(methods) -> tuple[str, ...]:
    """`methods` (names or a comma-separated string) as candidates in `METHODS` order; `none` is always one."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown calibration method(s) {', '.join(unknown)}; choose among "
                         f"{', '.join(METHODS[1:])}.")
    chosen = tuple(m for m in METHODS if m in methods or m == "none")
    if len(chosen) < 2:
        raise ValueError(f"--methods needs at least one of {', '.join(METHODS[1:])}.")
    return chosen


def calibrate_model(model, tokenizer, texts, *, methods=METHODS, folds: int = 2, fit_fraction: float = 0.5,
                    seed: int = 0, block_size=None, stride=None, batch_size: int = 8,
                    num_bins: int = NUM_BINS) -> dict:
    """Choose and fit a calibration on part of `texts` and measure every candidate on the rest (see the module
    docstring); returns the report: `method` (the chosen one), `config` (the config.json fields that apply it),
    `selection` (cross-validated NLL per method), `before` and `after` (the chosen method) on the measured texts,
    `methods` (each method's parameters and metrics), token counts. The model is not modified."""
    methods = check_methods(methods)
    if folds < 2:
        raise ValueError(f"--folds must be at least 2 (fit on some, score on another), got {folds}.")
    texts = [t for t in texts if t.strip()]
    fit_texts, eval_texts = split_texts(texts, fit_fraction, seed)
    folds = min(folds, len(fit_texts))
    head = _Head(model)
    kwargs = dict(block_size=block_size, stride=stride, batch_size=batch_size)
    parts = [head_inputs(model, tokenizer, fit_texts[i::folds], **kwargs) for i in range(folds)]
    fit_hidden, fit_targets = torch.cat([h for h, _ in parts]), torch.cat([t for _, t in parts])
    eval_hidden, eval_targets = head_inputs(model, tokenizer, eval_texts, **kwargs)
    scores = cross_validated_nll(head, parts, methods)
    chosen = choose_method(scores)
    fitted = {method: fit_calibration(method, head, fit_hidden, fit_targets) for method in methods}
    results = {method: {"parameters": fitted[method].parameters(), "cross_validated_nll": scores[method],
                        "fit_nll": nll_sum(head, fit_hidden, fit_targets, fitted[method]) / len(fit_targets),
                        "after": calibrated_metrics(head, eval_hidden, eval_targets, fitted[method], num_bins)}
               for method in methods}
    return {
        "method": chosen,
        "config": fitted[chosen].config(),
        "selection": {"folds": folds, "cross_validated_nll": scores,
                      "rule": "lowest cross-validated next-token NLL on the fit texts; fewer parameters on a tie"},
        "fit": {"texts": len(fit_texts), "tokens": len(fit_targets), "nll_before": results["none"]["fit_nll"],
                "nll_after": results[chosen]["fit_nll"]},
        "eval": {"texts": len(eval_texts), "tokens": len(eval_targets)},
        "before": results["none"]["after"],
        "after": results[chosen]["after"],
        "methods": {method: result for method, result in results.items() if method != "none"},
        "settings": {"fit_fraction": fit_fraction, "seed": seed, "num_bins": num_bins, "methods": list(methods[1:]),
                     "fit": "LBFGS on next-token NLL from the raw logits; Platt biases with a standard normal prior"},
    }


def plot_calibration(report: dict, path) -> Path:
    """Reliability diagrams before calibration and after each method, side by side."""
    import matplotlib  # optional: the train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the train extra

    panels = [("Before", report["before"])] + [
        (METHOD_NAMES[m].capitalize() + (" (chosen)" if m == report["method"] else ""), r["after"])
        for m, r in report["methods"].items()]
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for column, (title, m) in enumerate(panels):
        draw_reliability(axes[0, column], axes[1, column], m["bins"],
                         f"{title}: NLL {m['nll']:.3f}, Brier {m['brier']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _describe(method: str, parameters: dict) -> str:
    if method == "temperature":
        return f"T = {parameters['temperature']:.4f}"
    if method == "beta":
        return f"a = {parameters['a']:.4f}, b = {parameters['b']:.4f}, c = {parameters['c']:.4f}"
    bias = parameters["bias"]
    return f"T = {parameters['temperature']:.4f}, biases in [{bias['min']:.3f}, {bias['max']:.3f}]"


def format_report(report: dict) -> str:
    chosen, methods = report["method"], report["methods"]
    lines = [f"chosen: {METHOD_NAMES[chosen]} (lowest NLL in {report['selection']['folds']}-fold cross-validation on "
             f"{report['fit']['tokens']:,} tokens; measured on {report['eval']['tokens']:,} other tokens)"]
    lines += [f"  {m:<12} {_describe(m, r['parameters'])}" for m, r in methods.items()]
    columns = ["before"] + [m + ("*" if m == chosen else "") for m in methods]
    lines += ["", f"{'metric':<18}" + "".join(f"{c:>13}" for c in columns), "-" * (18 + 13 * len(columns))]
    lines.append(f"{'cross-val. NLL':<18}" + "".join(f"{report['selection']['cross_validated_nll'][m]:>13.4f}"
                                                     for m in ["none", *methods]))
    for key, name in (("nll", "NLL (nats/tok)"), ("ece", "ECE (15 bins)"), ("brier", "Brier"),
                      ("accuracy", "top-1 accuracy")):
        lines.append(f"{name:<18}" + "".join(f"{r[key]:>13.4f}"
                                             for r in [report["before"], *(r["after"] for r in methods.values())]))
    return "\n".join(lines)


def write_calibrated_folder(source, output, report: dict) -> Path:
    """Copy the model folder `source` to `output` (or rewrite it in place) with the chosen calibration in
    config.json, calibration.json and calibration.png, atomically."""
    source, output = Path(source), Path(output)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    package_models = Path(__file__).resolve().parents[1] / "models"
    with atomic.folder(output) as tmp:
        for item in source.iterdir():
            if item.name.startswith(".") or item.name in (CALIBRATION_FILE, CALIBRATION_PLOT):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        config.update(report["config"])
        atomic.write_json(tmp / "config.json", config)
        # a folder saved before these calibrations existed carries modeling code that would ignore the fields
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
    add_text_arguments(parser, "held-out texts (not the training data)")
    parser.add_argument("--methods", default=",".join(METHODS[1:]),
                        help="candidates, comma-separated, besides no calibration (default: %(default)s); the "
                             "lowest cross-validated NLL wins")
    parser.add_argument("--folds", type=int, default=2, help="cross-validation folds over the fit texts")
    parser.add_argument("--fit-fraction", type=float, default=0.5,
                        help="share of the texts the calibration is chosen and fitted on; the rest measure "
                             "before/after")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit/measure split")
    parser.add_argument("--block-size", type=int, help="tokens per window (default: the model's context, ≤ 2048)")
    parser.add_argument("--stride", type=int, help="new tokens scored per window (default: block size / 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", help="write the calibrated model here (default: rewrite MODEL in place)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_loading_arguments(parser, dtype=False)  # calibration is fitted in float32


def run(args) -> int:
    if not Path(args.model).is_dir():
        raise ValueError(f"{args.model!r} is not a local model folder; download it first (e.g. `hf download "
                         f"{args.model} --local-dir DIR`) so the calibrated copy can be written.")
    config = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8")) \
        if (Path(args.model) / "config.json").is_file() else {}
    if config and config.get("model_type") != "openllm":
        raise ValueError(f"{args.model} is a {config.get('model_type')!r} model, whose config has no calibration "
                         "fields its forward pass reads; calibration is stored in OpenLLM models only.")
    if args.max_samples is not None and args.max_samples < 3:
        raise ValueError(f"--max-samples must be at least 3, got {args.max_samples}.")
    methods = check_methods(args.methods)  # before loading anything
    texts, _ = load_args_texts(args)
    model, tokenizer = load_causal_lm(args.model, device=args.device, dtype="float32", revision=args.revision,
                                      trust_remote_code=args.trust_remote_code)
    report = calibrate_model(model, tokenizer, texts, methods=methods, folds=args.folds,
                             fit_fraction=args.fit_fraction, seed=args.seed, block_size=args.block_size,
                             stride=args.stride, batch_size=args.batch_size)
    report["dataset"] = {"name": args.dataset, "config": args.dataset_config, "split": args.split,
                         "text_column": args.text_column}
    output = write_calibrated_folder(args.model, args.output_dir or args.model, report)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
        print(f"\nWrote {output} ({METHOD_NAMES[report['method']]} in config.json, {CALIBRATION_FILE}, "
              f"{CALIBRATION_PLOT}).")
    if (output / "eval_results.json").is_file():
        print("Note: eval_results.json there was measured before calibration; rerun `openllm eval` to update it.",
              file=sys.stderr)
    return 0
