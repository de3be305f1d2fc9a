"""Selective prediction: how sure a model is of a whole sequence, when it should abstain, and how well its confidence
ranks right answers above wrong ones.

    conf = sequence_confidence(token_logprobs, token_entropies)   # mean/min token log-prob, mean entropy
    conf.confidence                                               # exp(mean token log-prob), in (0, 1]
    should_abstain(conf.confidence, 0.6)                          # True exactly when confidence < 0.6
    curve = risk_coverage(confidences, correct)                   # curve["aurc"], plot_risk_coverage(curve, path)

A sequence's confidence is the geometric mean of its tokens' probabilities, `exp(mean log p)`: a probability, so a
threshold reads the same for short and long answers, and it is what the per-token log-probabilities of the TGI
`details` and OpenAI `logprobs` fields add up to. The model's own (calibrated, see `openllm calibrate`)
distribution is used, never the sampling-adjusted one.

Risk-coverage (Geifman & El-Yaniv, 2017): answer only the fraction `coverage` of questions the model is most confident
about; `risk` is the error rate on those. AURC is the area under that curve (lower is better); a confidence that
ranks at random has an expected AURC equal to the overall error rate, and the best possible ranking (every right
answer first) reaches the `oracle_aurc`.
"""

import math
from dataclasses import asdict, dataclass

import torch

ABSTAIN = "abstain"
ABSTAIN_MESSAGE = ("Abstained: the model's confidence in its answer ({confidence:.4f}, the geometric mean of its "
                   "token probabilities) is below the threshold {threshold}.")
RISK_COVERAGE_FILE = "risk_coverage.png"


@dataclass(frozen=True)
class SequenceConfidence:
    tokens: int
    mean_logprob: float  # nats per token
    min_logprob: float
    mean_entropy: float | None  # nats, of the full next-token distribution; None when not measured

    @property
    def confidence(self) -> float:
        return math.exp(self.mean_logprob)

    def to_dict(self) -> dict:
        return {**asdict(self), "confidence": self.confidence}


def sequence_confidence(token_logprobs, token_entropies=None) -> SequenceConfidence:
    """Confidence of one sequence from its tokens' log-probabilities (natural log) and, optionally, the entropies of
    the next-token distributions they were drawn from. An empty sequence has confidence 1 (nothing was risked)."""
    token_logprobs = [float(x) for x in token_logprobs]
    if any(x > 1e-6 or math.isnan(x) for x in token_logprobs):
        raise ValueError("Token log-probabilities must be <= 0 (natural log); got "
                         f"{[x for x in token_logprobs if not x <= 1e-6][:3]}. Pass log-probabilities, not "
                         "probabilities or logits.")
    entropies = None if token_entropies is None else [float(x) for x in token_entropies]
    if entropies is not None and len(entropies) != len(token_logprobs):
        raise ValueError(f"{len(token_logprobs)} token log-probabilities but {len(entropies)} entropies.")
    n = len(token_logprobs)
    return SequenceConfidence(
        tokens=n,
        mean_logprob=sum(token_logprobs) / n if n else 0.0,
        min_logprob=min(token_logprobs) if n else 0.0,
        mean_entropy=(sum(entropies) / n if n else 0.0) if entropies is not None else None,
    )


def token_logprobs_and_entropies(logits, token_ids):
    """Per position: log-probability of `token_ids` and entropy of the distribution, from (seq, vocab) logits."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(-1, token_ids.reshape(-1, 1).to(logprobs.device)).squeeze(-1)
    # a second softmax beats `logprobs.exp()`: the serving engine runs this over the whole vocabulary every step
    return chosen.cpu(), -(torch.softmax(logits, dim=-1) * logprobs).sum(-1).cpu()


def check_threshold(threshold: float) -> float:
    if not 0 <= threshold <= 1:
        raise ValueError(f"The abstention threshold is a probability in [0, 1], got {threshold}.")
    return float(threshold)


def should_abstain(confidence: float, threshold: float | None) -> bool:
    """Abstain exactly when the confidence is strictly below the threshold; no threshold never abstains."""
    return threshold is not None and confidence < check_threshold(threshold)


def abstain_message(confidence: float, threshold: float) -> str:
    return ABSTAIN_MESSAGE.format(confidence=confidence, threshold=threshold)


def risk_coverage(confidences, correct) -> dict:
    """Risk-coverage curve of answers ranked by decreasing confidence: for k = 1..n, coverage k/n and the error rate
    of the k most confident answers. Ties are broken against the model (wrong answers first), so a constant
    confidence gets no credit for the order the answers came in. Also the AURC (mean risk over the n coverage
    levels), the expected AURC of a random ranking and the oracle's."""
    if len(confidences) != len(correct) or not len(correct):
        raise ValueError(f"risk_coverage needs as many confidences as answers, and at least one; got "
                         f"{len(confidences)} and {len(correct)}.")
    order = sorted(range(len(correct)), key=lambda i: (-float(confidences[i]), bool(correct[i])))
    errors, risks = 0, []
    for k, i in enumerate(order, start=1):
        errors += not correct[i]
        risks.append(errors / k)
    n, wrong = len(correct), sum(not c for c in correct)
    oracle = sum(max(0, k - (n - wrong)) / k for k in range(1, n + 1)) / n
    return {"coverage": [k / n for k in range(1, n + 1)], "risk": risks, "aurc": sum(risks) / n,
            "random_aurc": wrong / n, "oracle_aurc": oracle, "accuracy": (n - wrong) / n, "answers": n}


def plot_risk_coverage(curve: dict, path, title: str = "Risk-coverage of answers ranked by confidence"):
    import matplotlib  # optional: the train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the train extra

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(curve["coverage"], curve["risk"], label=f"model confidence (AURC {curve['aurc']:.3f})")
    ax.axhline(curve["random_aurc"], color="gray", linestyle="--",
               label=f"random ranking ({curve['random_aurc']:.3f})")
    n, right = curve["answers"], round(curve["accuracy"] * curve["answers"])
    ax.plot([k / n for k in range(1, n + 1)], [max(0, k - right) / k for k in range(1, n + 1)], ":", color="green",
            label=f"oracle ({curve['oracle_aurc']:.3f})")
    ax.set(xlabel="coverage (fraction answered)", ylabel="risk (error rate of answered)", xlim=(0, 1),
           ylim=(0, max(0.05, max(curve["risk"]) * 1.05)), title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path
