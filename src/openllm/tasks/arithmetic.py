"""Addition, parity and reversal: one-line questions whose answer is one word, checked by exact match.

    dataset_name: openllm:mix          # every task here (also openllm:addition|parity|reverse)

Each example is {task, prompt, answer, wrong}; `wrong` is a plausible incorrect answer (off by a few, the other
parity, the word not reversed), the rejected reply of preference pairs.
"""

import random

from ..data.post_training import train_example_tokenizer
from .common import Task, TaskMixture, answer_of


def _addition(rng: random.Random, max_operand: int = 20) -> tuple[str, str, str]:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    answer = a + b
    wrong = answer + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if answer + d >= 0])
    return f"What is {a} + {b}?", str(answer), str(wrong)


def _parity(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(0, 999)
    answer = "even" if n % 2 == 0 else "odd"
    return f"Is {n} even or odd?", answer, "odd" if answer == "even" else "even"


def _reverse(rng: random.Random) -> tuple[str, str, str]:
    while True:
        word = "".join(rng.choice("abcdef") for _ in range(rng.randint(3, 5)))
        if word != word[::-1]:
            break
    # the wrong answer is the word copied unchanged: the most likely mistake
    return f"Reverse the letters of {word}.", word[::-1], word


def is_exact(completion, answer: str) -> bool:
    """The completion, stripped, is the answer."""
    return answer_of(completion) == str(answer).strip()


class ArithmeticTask(Task):
    family = "arithmetic"

    def __init__(self, name: str, make):
        self.name, self.make = name, make

    def draw(self, rng: random.Random) -> tuple[str, dict]:
        prompt, answer, wrong = self.make(rng)
        return prompt, {"task": self.name, "prompt": prompt, "answer": answer, "wrong": wrong}

    def evaluate(self, example: dict, completion) -> bool:
        return is_exact(completion, example["answer"])


ADDITION, PARITY, REVERSE = (ArithmeticTask("addition", _addition), ArithmeticTask("parity", _parity),
                             ArithmeticTask("reverse", _reverse))
TASKS = (ADDITION, PARITY, REVERSE)
NAMES = tuple(t.name for t in TASKS)
MIX = TaskMixture("mix", TASKS)


def make_task_examples(tasks=NAMES, n: int = 1000, split: str = "train", seed: int = 0,
                       test_fraction: float = 0.1) -> list[dict]:
    """`n` examples {task, prompt, answer, wrong} cycling through the named `tasks`; train and test questions are
    disjoint."""
    unknown = [t for t in tasks if t not in NAMES]
    if unknown:
        raise ValueError(f"Unknown synthetic task(s) {unknown}. Choose from: {', '.join(NAMES)}.")
    by_name = {t.name: t for t in TASKS}
    return TaskMixture(",".join(tasks), [by_name[t] for t in tasks]).examples(split, n, seed, test_fraction)


def make_example_tokenizer(texts=None, vocab_size: int = 384):
    """The small tokenizer of the synthetic tasks (`openllm.data.post_training.train_example_tokenizer`), trained on
    their questions and answers unless `texts` are given."""
    if texts is None:
        texts = [f"Question: {e['prompt']}\nAnswer: {e['answer']} {e['wrong']}" for e in make_task_examples(n=3000)]
    return train_example_tokenizer(texts, vocab_size)
