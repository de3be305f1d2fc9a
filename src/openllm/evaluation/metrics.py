"""Calibration of top-1 predictions: reliability bins, expected calibration error, Brier score and the reliability
diagram. Shared by `openllm eval` (`perplexity`) and `openllm calibrate` (`calibration`).

- `ece` is the expected calibration error over equal-width confidence bins (lo, hi] (Guo et al., 2017):
  sum over bins of (bin count / total) * |accuracy - mean confidence|.
- `brier` is the multi-class Brier score over the full vocabulary, sum_k (p_k - 1[k = target])^2, averaged over
  predictions (0 is perfect, 2 the worst).
"""

from pathlib import Path

import torch

NUM_BINS = 15


def reliability_bins(confidences, correct, num_bins: int = NUM_BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence and accuracy of the top-1 predictions."""
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


def bins_ece(bins: list[dict]) -> float:
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("expected_calibration_error needs at least one prediction.")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


def expected_calibration_error(confidences, correct, num_bins: int = NUM_BINS) -> float:
    """ECE = sum over bins of (bin count / total) * |accuracy - mean confidence| (Guo et al., 2017)."""
    return bins_ece(reliability_bins(confidences, correct, num_bins))


def brier_score(probs, targets) -> float:
    """Multi-class Brier score, sum_k (p_k - 1[k = target])^2, averaged over rows of `probs` (N, num_classes)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    targets = torch.as_tensor(targets, dtype=torch.long)
    return float(brier_per_row(probs, targets).mean())


def brier_per_row(probs, targets):
    # expanded so it never materialises the one-hot matrix: sum p^2 - 2 p_target + 1
    return (probs * probs).sum(-1) - 2 * probs.gather(-1, targets[:, None]).squeeze(-1) + 1


def draw_reliability(top, bottom, bins: list[dict], title: str) -> None:
    """Draw a reliability diagram on two matplotlib axes: accuracy and gap per bin on `top`, counts on `bottom`."""
    total = sum(b["count"] for b in bins)
    width = bins[0]["upper"] - bins[0]["lower"]
    lowers = [b["lower"] for b in bins]
    accuracies = [b["accuracy"] or 0.0 for b in bins]
    gaps = [(b["confidence"] - b["accuracy"]) if b["count"] else 0.0 for b in bins]
    top.bar(lowers, accuracies, width=width, align="edge", edgecolor="black", label="accuracy")
    top.bar(lowers, gaps, bottom=accuracies, width=width, align="edge", color="tab:red", alpha=0.3,
            label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="top-1 accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title}\n(ECE {bins_ece(bins):.4f}, {total:,} tokens)", fontsize=10)
    top.legend(loc="upper left")
    bottom.bar(lowers, [b["count"] for b in bins], width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set(xlabel="top-1 confidence", ylabel="tokens", yscale="log" if any(b["count"] for b in bins) else "linear")


def plot_reliability_diagram(bins: list[dict], path, title: str = "Next-token calibration") -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), with the token count per bin."""
    import matplotlib  # optional: the train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the train extra

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_reliability(top, bottom, bins, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def auroc(negatives, positives) -> float:
    """Area under the ROC curve of a score that should be higher for `positives`: the probability that a random
    positive outscores a random negative, ties counting half (the Mann-Whitney U statistic, normalised)."""
    negatives, positives = torch.as_tensor(negatives).double(), torch.as_tensor(positives).double()
    wins = (positives[:, None] > negatives[None, :]).double() + 0.5 * (positives[:, None] == negatives[None, :])
    return float(wins.mean())
