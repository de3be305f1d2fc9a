"""Running a model over a checkable task (`openllm.tasks`): answer accuracy, exact match and pass@k on worked
solutions, and answer accuracy with selective prediction.

    openllm eval MODEL --answers openllm:mix --answers-size 300 --output-dir MODEL    # writes risk_coverage.png

Selective prediction: each question is answered greedily, checked, and given the model's confidence; ranking answers
by confidence gives the risk-coverage curve. Questions are the held-out ones of the synthetic tasks, asked in the
format the post-training recipes teach: "Question: ...\\nAnswer:" (or as a user turn through the chat template with
`--chat`).
"""

from tqdm.auto import tqdm

from ..tasks import ANSWER, Task, get_task
from ..tasks.reasoning import check_solution
from .confidence import RISK_COVERAGE_FILE, plot_risk_coverage, risk_coverage
from .generation import generate_completions, generate_with_confidence

# confidence scores compared on the same answers: higher means more confident
SCORES = {"confidence": lambda c: c["confidence"], "min_logprob": lambda c: c["min_logprob"],
          "neg_mean_entropy": lambda c: -c["mean_entropy"]}


def answer_accuracy(model, tokenizer, task: Task, examples, max_new_tokens: int = 8, batch_size: int = 64) -> float:
    """Share of `examples` ({prompt, answer}; prompts as strings or chat messages) whose greedy completion `task`
    evaluates as right."""
    completions = generate_completions(model, tokenizer, [e["prompt"] for e in examples],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
    return sum(task.evaluate(e, c[0]) for e, c in zip(examples, completions)) / max(len(examples), 1)


def evaluate_reasoning(model, tokenizer, task: Task, examples, max_new_tokens: int = 96, k: int = 0,
                       temperature: float = 1.0, batch_size: int = 64) -> dict:
    """Greedy exact match and well-formed share (`check_solution`) on `examples` ({prompt, answer}); with `k`, also
    pass@1 and pass@k of `k` samples at `temperature` (the headroom RL can turn into greedy accuracy)."""
    prompts = [e["prompt"] for e in examples]
    greedy = [c[0] for c in generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size)]
    result = {"exact_match": sum(map(task.evaluate, examples, greedy)) / len(examples),
              "well_formed": sum(check_solution(c).well_formed for c in greedy) / len(examples), "n": len(examples)}
    if k:
        samples = generate_completions(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       batch_size=max(batch_size // k, 1), num_samples=k, temperature=temperature)
        hits = [[task.evaluate(e, c) for c in group] for group, e in zip(samples, examples)]
        result[f"pass@1_t{temperature:g}"] = sum(map(sum, hits)) / (k * len(examples))
        result[f"pass@{k}_t{temperature:g}"] = sum(map(any, hits)) / len(examples)
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}


def synthetic_questions(spec: str = "openllm:mix", n: int = 200, seed: int = 0) -> list[dict]:
    """Held-out questions of task `spec` (`openllm.tasks.get_task`): "openllm:mix", "addition", "addition,parity"."""
    if n < 1:
        raise ValueError(f"--answers-size must be at least 1, got {n}.")
    return get_task(spec).examples("test", n, seed)


def evaluate_answers(model, tokenizer, examples, *, task: Task = ANSWER, chat: bool = False, max_new_tokens: int = 16,
                     show_progress: bool = False) -> dict:
    """Answer every example ({prompt, answer}) greedily, check it with `task`, and rank by confidence: per-answer
    rows, accuracy, the risk-coverage curve and its AURC (by `confidence` = exp(mean token log-prob), plus the AURC of
    the other scores in `SCORES` for comparison)."""
    rows = []
    for example in tqdm(examples, desc="answers", disable=not show_progress):
        prompt = example["prompt"] if chat else f"Question: {example['prompt']}\nAnswer:"
        result = generate_with_confidence(model, tokenizer, prompt, greedy=True, max_new_tokens=max_new_tokens,
                                          stop=["\n"], chat=chat)
        rows.append({"task": example.get("task"), "prompt": example["prompt"], "answer": example["answer"],
                     "completion": result.text.strip(), "correct": task.evaluate(example, result.text),
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


__all__ = ["answer_accuracy", "evaluate_reasoning", "synthetic_questions", "evaluate_answers", "save_risk_coverage",
           "RISK_COVERAGE_FILE"]
