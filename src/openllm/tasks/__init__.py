"""Checkable tasks, one file per family: `arithmetic` (addition, parity, reversal), `reasoning` (worked addition, word
problems, GSM8K-style data) and `answer` (any data with an `answer` column). `common` holds the `Task` base.

Tasks and their mixtures are registered by name, and every name is also a synthetic dataset for post-training:

    dataset_name: openllm:mix          # generated on the fly: openllm:<any name in REGISTRY>

    get_task("openllm:reasoning").examples("test", n=100)    # the same examples for the same seed, every time
"""

import json
from pathlib import Path

from datasets import Dataset, DatasetDict

from .. import atomic
from ..data.post_training import load_raw_dataset, split_and_check
from . import arithmetic, reasoning
from .answer import ANSWER
from .arithmetic import make_example_tokenizer, make_task_examples
from .common import Task, TaskMixture, answer_of
from .reasoning import make_reasoning_examples

SYNTHETIC_PREFIX = "openllm:"
REGISTRY: dict[str, Task] = {
    "mix": arithmetic.MIX, **{t.name: t for t in arithmetic.TASKS},
    "reasoning": reasoning.MIX, **{t.name: t for t in reasoning.TASKS},
}


def get_task(name: str) -> Task:
    """The task or mixture called `name` (with or without the `openllm:` prefix); "addition,parity" mixes tasks of
    one family. An unknown name fails with the valid ones."""
    parts = [p.strip() for p in name.removeprefix(SYNTHETIC_PREFIX).split(",") if p.strip()]
    unknown = [p for p in parts if p not in REGISTRY] or ([] if parts else [name])
    if unknown:
        raise ValueError(f"Unknown task {name!r}. Choose from: "
                         f"{', '.join(SYNTHETIC_PREFIX + n for n in REGISTRY)}.")
    if len(parts) == 1:
        return REGISTRY[parts[0]]
    return TaskMixture(",".join(parts), [t for p in parts for t in getattr(REGISTRY[p], "tasks", (REGISTRY[p],))])


def synthetic_dataset(name: str, stage: str, fmt: str | None = None, train_size: int = 4000, test_size: int = 200,
                      seed: int = 0, terse_fraction: float = 0.0):
    """DatasetDict(train, test) of task `name` (e.g. `openllm:mix`) in the TRL format of `stage`; `terse_fraction`
    applies to the reasoning tasks."""
    task = get_task(name)
    options = {"terse_fraction": terse_fraction} if terse_fraction else {}
    return DatasetDict({split: Dataset.from_list(task.format(task.examples(split, n, seed, **options), stage,
                                                             fmt or "conversational"))
                        for split, n in (("train", train_size), ("test", test_size))})


def load_post_dataset(name: str, stage: str, config: str | None = None, train_split: str = "train",
                      test_split: str = "test", test_size: float = 0.05, seed: int = 0, terse_fraction: float = 0.0):
    """DatasetDict with `train_split` (and `test_split`, split off the training data when missing) for `stage`:
    a synthetic task (`openllm:<name>`), a local file or folder, or a Hub dataset; GSM8K-style `question` + `answer`
    data is turned into the stage's format. `terse_fraction`: see `openllm.tasks.reasoning.ReasoningTask.draw`."""
    if not name:
        raise ValueError("No dataset given: set `dataset_name` to a Hub id, a local file/folder, or `openllm:mix`.")
    synthetic = name.startswith(SYNTHETIC_PREFIX)
    if terse_fraction and not (synthetic and get_task(name).family == "reasoning"):
        raise ValueError(f"terse_fraction={terse_fraction} applies to the synthetic reasoning data "
                         f"(openllm:reasoning, openllm:addition-cot, openllm:word-problems), not to {name}: set "
                         f"terse_fraction: 0.")
    if synthetic:
        dataset = synthetic_dataset(name, stage, fmt=config, terse_fraction=terse_fraction)
    else:
        dataset = reasoning.convert_question_answer(load_raw_dataset(name, config, train_split, test_split), stage,
                                                    fmt=config)
    return split_and_check(dataset, stage, name, train_split, test_split, test_size, seed)


def write_datasets(output_dir, name: str = "openllm:mix", train_size: int = 2000, test_size: int = 200,
                   fmt: str = "conversational", seed: int = 0) -> dict[str, Path]:
    """Write task `name` as `<output_dir>/<folder>/{train,test}.jsonl` for sft, preference (dpo and reward) and
    prompts (rlhf), to read the data or start your own."""
    task, output_dir, written = get_task(name), Path(output_dir), {}
    for stage, folder in (("sft", "sft"), ("dpo", "preference"), ("rlhf", "prompts")):
        for split, n in (("train", train_size), ("test", test_size)):
            rows = task.format(task.examples(split, n, seed), stage, fmt)
            atomic.write_text(output_dir / folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        written[folder] = output_dir / folder
    return written


__all__ = ["ANSWER", "REGISTRY", "SYNTHETIC_PREFIX", "Task", "TaskMixture", "answer_of", "get_task",
           "load_post_dataset", "make_example_tokenizer", "make_reasoning_examples", "make_task_examples",
           "synthetic_dataset", "write_datasets"]
