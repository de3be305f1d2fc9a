"""What every checkable task shares: the `Task` base, mixtures of tasks, and the deterministic train/test split.

A task is a view over examples a program generates from a seed: `examples(split, n, seed)` draws them (the same ones
for the same arguments), `evaluate(example, completion)` says whether a completion is right, `reward(example,
completion)` scores it for RL, and `format(examples, stage)` writes them in the TRL format of a training stage.
"""

import random
import zlib

from ..data.post_training import format_examples


def answer_of(completion) -> str:
    """The text of a completion, whether a string or a list of chat messages (TRL passes either)."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")
    return str(completion).strip()


def is_held_out(key: str, test_fraction: float) -> bool:
    # a stable hash of the question decides its split, so test questions never appear in training
    return (zlib.crc32(key.encode()) % 1000) < test_fraction * 1000


def draw_split(draw, tasks, n: int, split: str, rng, test_fraction: float, kind: str = "synthetic task") -> list[dict]:
    """`n` examples of `split` cycling through `tasks`: `draw(task, rng) -> (key, example)` makes one, and the hash of
    `key` decides whether it belongs to the test split; draws of the other split are skipped."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    examples, attempts = [], 0
    while len(examples) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"Could not draw {n} {split} examples for {kind}s {list(tasks)}: the task space is too "
                               "small for that many held-out questions; ask for fewer.")
        task = tasks[len(examples) % len(tasks)]
        key, example = draw(task, rng)
        if is_held_out(key, test_fraction) == (split == "test"):
            examples.append(example)
    return examples


class Task:
    """One checkable task. Subclasses set `name` and `family`, and define `draw` and `evaluate`."""

    name: str
    family: str  # tasks of one family share a random stream, so a mixture of them draws from it in turn
    kind = "synthetic task"
    # the example fields that become the chosen and rejected replies, and what follows "Answer:" in plain text
    chosen, rejected, answer_lead = "answer", "wrong", " "

    def __repr__(self) -> str:
        return self.name

    def rng(self, seed: int, split: str) -> random.Random:
        return random.Random(f"{seed}-{split}")

    def draw(self, rng: random.Random, **options) -> tuple[str, dict]:
        """(key deciding the split, example) from `rng`."""
        raise NotImplementedError

    def examples(self, split: str = "train", n: int = 1000, seed: int = 0, test_fraction: float = 0.1,
                 **options) -> list[dict]:
        return TaskMixture(self.name, (self,)).examples(split, n, seed, test_fraction, **options)

    def evaluate(self, example: dict, completion) -> bool:
        raise NotImplementedError

    def reward(self, example: dict, completion) -> float:
        return float(self.evaluate(example, completion))

    def format(self, examples: list[dict], stage: str, fmt: str = "conversational") -> list[dict]:
        """`examples` in the TRL format of `stage`, keeping `task` and `answer` for the rewards."""
        return format_examples(examples, stage, fmt, self.chosen, self.rejected, self.answer_lead)


class TaskMixture(Task):
    """Tasks of one family drawn in turn from one random stream; an example is evaluated by its own task."""

    def __init__(self, name: str, tasks):
        self.name, self.tasks = name, tuple(tasks)
        families = {t.family for t in self.tasks}
        if len(families) != 1:
            raise ValueError(f"A mixture draws from one family of tasks; {name!r} mixes {sorted(families)}.")
        first = self.tasks[0]
        self.family, self.kind = first.family, first.kind
        self.chosen, self.rejected, self.answer_lead = first.chosen, first.rejected, first.answer_lead
        self.by_name = {t.name: t for t in self.tasks}

    def examples(self, split: str = "train", n: int = 1000, seed: int = 0, test_fraction: float = 0.1,
                 **options) -> list[dict]:
        def draw(name, rng):
            return self.by_name[name].draw(rng, **options)

        return draw_split(draw, [t.name for t in self.tasks], n, split, self.tasks[0].rng(seed, split), test_fraction,
                          kind=self.kind)

    def task_of(self, example: dict) -> Task:
        return self.by_name[example["task"]]

    def evaluate(self, example: dict, completion) -> bool:
        return self.task_of(example).evaluate(example, completion)

    def reward(self, example: dict, completion) -> float:
        return self.task_of(example).reward(example, completion)
