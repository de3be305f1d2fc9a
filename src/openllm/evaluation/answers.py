"""Answer accuracy with selective prediction on questions whose answers a program can check: each question is answered
greedily, checked, and given the model's confidence; ranking answers by confidence gives the risk-coverage curve.

    openllm eval MODEL --answers openllm:mix --answers-size 300 --output-dir MODEL    # writes risk_coverage.png

Questions are the held-out ones of the synthetic tasks (`openllm.data.post_training`), asked in the format the
post-training recipes teach: "Question: ...\\nAnswer:" (or as a user turn through the chat template with `--chat`).
"""

from .confidence import RISK_COVERAGE_FILE, plot_risk_coverage, risk_coverage

# confidence scores compared on the same answers: higher means more confident
SCORES = {"confidence": lambda c: c["confidence"], "min_logprob": lambda c: c["min_logprob"],
          "neg_mean_entropy": lambda c: -c["mean_entropy"]}


def synthetic_questions(spec: str = "openllm:mix", n: int = 200, seed: int = 0) -> list[dict]:
    """Held-out questions of `spec`: "openllm:mix" (every task), "openllm:addition", or "addition,parity"."""
    from ..data.post_training import SYNTHETIC_PREFIX, TASKS, make_task_examples

    name = spec.removeprefix(SYNTHETIC_PREFIX)
    tasks = TASKS if name == "mix" else tuple(t.strip() for t in name.split(",") if t.strip())
    if n < 1:
        raise ValueError(f"--answers-size must be at least 1, got {n}.")
    return make_task_examples(tasks, n, split="test", seed=seed)


def evaluate_answers(model, tokenizer, examples, *, chat: bool = False, max_new_tokens: int = 16,
                     show_progress: bool = False) -> dict:
    """Answer every example ({prompt, answer}) greedily, check it, and rank by confidence: per-answer rows, accuracy,
    the risk-coverage curve and its AURC (by `confidence` = exp(mean token log-prob), plus the AURC of the other
    scores in `SCORES` for comparison)."""
    from tqdm.auto import tqdm

    from ..data.post_training import is_correct
    from .generation import generate_with_confidence

    rows = []
    for example in tqdm(examples, desc="answers", disable=not show_progress):
        prompt = example["prompt"] if chat else f"Question: {example['prompt']}\nAnswer:"
        result = generate_with_confidence(model, tokenizer, prompt, greedy=True, max_new_tokens=max_new_tokens,
                                          stop=["\n"], chat=chat)
        rows.append({"task": example.get("task"), "prompt": example["prompt"], "answer": example["answer"],
                     "completion": result.text.strip(), "correct": is_correct(result.text, example["answer"]),
                     "finish_reason": result.finish_reason, **result.confidence.to_dict()})
    correct = [r["correct"] for r in rows]
    curve = risk_coverage([r["confidence"] for r in rows], correct)
    return {
        "questions": len(rows),
        "accuracy": curve["accuracy"],
        "aurc": curve["aurc"],
        "random_aurc": curve["random_aurc"],
        "oracle_aurc": curve["oracle_aurc"],
        "aurc_by_score": {name: risk_coverage([score(r) for r in rows], correct)["aurc"]
                          for name, score in SCORES.items()},
        "risk_coverage": {"coverage": curve["coverage"], "risk": curve["risk"]},
        "settings": {"decoding": "greedy", "max_new_tokens": max_new_tokens, "stop": ["\n"], "chat": chat,
                     "confidence": "exp(mean token log-prob) of the generated tokens"},
        "answers": rows,
    }


def save_risk_coverage(report: dict, path) -> None:
    curve = {**report["risk_coverage"], **{k: report[k] for k in ("aurc", "random_aurc", "oracle_aurc",
                                                                  "accuracy")}, "answers": report["questions"]}
    plot_risk_coverage(curve, path)


__all__ = ["synthetic_questions", "evaluate_answers", "save_risk_coverage", "RISK_COVERAGE_FILE"]
