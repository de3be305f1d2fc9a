"""Post-training data: loading datasets in TRL's standard formats, checking them before training, and small
synthetic tasks whose answers a program can check (so SFT → reward model → DPO/RLHF runs offline).

    dataset_name: openllm:mix          # synthetic, generated on the fly (also openllm:addition|parity|reverse)
    dataset_name: data/sft.jsonl       # local .json/.jsonl/.csv/.parquet file, folder of them, or save_to_disk folder
    dataset_name: trl-lib/Capybara     # a Hub dataset

Formats per stage (TRL's names): `sft` takes `messages`, `prompt`+`completion` or `text`; `dpo` and `reward` take
`chosen`+`rejected` (with an explicit `prompt` or a prompt shared inside conversational pairs); `rlhf` takes
`prompt`. Any other column (e.g. `answer`) is passed through, and reward functions receive it.

Write the synthetic sets to files to look at them or to start your own:

    python -m openllm.data.post_training --output-dir data/toy --train-size 2000
"""

import argparse
import json
import random
import zlib
from pathlib import Path

SYNTHETIC_PREFIX = "openllm:"
TASKS = ("addition", "parity", "reverse")
STAGES = ("sft", "dpo", "reward", "rlhf")
FORMATS = ("conversational", "standard")
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic tasks with checkable answers
# ---------------------------------------------------------------------------------------------------------------------


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


_TASK_FUNCTIONS = {"addition": _addition, "parity": _parity, "reverse": _reverse}


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


def make_task_examples(tasks=TASKS, n: int = 1000, split: str = "train", seed: int = 0,
                       test_fraction: float = 0.1) -> list[dict]:
    """`n` examples {task, prompt, answer, wrong} cycling through `tasks`; train and test questions are disjoint.

    `wrong` is a plausible incorrect answer (off by a few, the other parity, the word not reversed).
    """
    unknown = [t for t in tasks if t not in _TASK_FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown synthetic task(s) {unknown}. Choose from: {', '.join(TASKS)}.")

    def draw(task, rng):
        prompt, answer, wrong = _TASK_FUNCTIONS[task](rng)
        return prompt, {"task": task, "prompt": prompt, "answer": answer, "wrong": wrong}

    return draw_split(draw, tasks, n, split, random.Random(f"{seed}-{split}"), test_fraction)


def format_examples(examples: list[dict], stage: str, fmt: str = "conversational", chosen: str = "answer",
                    rejected: str = "wrong", answer_lead: str = " ") -> list[dict]:
    """Turn task examples into the TRL format of `stage` ("sft", "dpo", "reward", "rlhf"), keeping `task`/`answer`.
    The assistant's reply is the example's `chosen` field, the rejected one its `rejected` field; `answer_lead`
    follows "Answer:" in the standard (non-chat) format."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose from {', '.join(FORMATS)}.")
    rows = []
    for ex in examples:
        if fmt == "conversational":
            prompt = [{"role": "user", "content": ex["prompt"]}]
            good = [{"role": "assistant", "content": ex[chosen]}]
            bad = [{"role": "assistant", "content": ex[rejected]}]
        else:
            prompt, good, bad = f"Question: {ex['prompt']}\nAnswer:{answer_lead}", ex[chosen], ex[rejected]
        row = {"task": ex["task"], "answer": ex["answer"]}
        if stage == "sft" and fmt == "conversational":
            row["messages"] = prompt + good
        elif stage == "sft":
            row.update(prompt=prompt, completion=good)
        elif stage in ("dpo", "reward"):
            row.update(prompt=prompt, chosen=good, rejected=bad)
        else:
            row["prompt"] = prompt
        rows.append(row)
    return rows


def synthetic_dataset(name: str, stage: str, fmt: str | None = None, train_size: int = 4000, test_size: int = 200,
                      seed: int = 0, terse_fraction: float = 0.0):
    """DatasetDict(train, test) for `openllm:<task>` (`openllm:mix` = every task); `terse_fraction` applies to the
    reasoning tasks (`openllm.data.reasoning`)."""
    from datasets import Dataset, DatasetDict

    from .reasoning import MIX, is_reasoning_dataset, reasoning_dataset
    from .reasoning import TASKS as REASONING

    if is_reasoning_dataset(name):  # worked solutions with `#### answer` lines: openllm.data.reasoning
        return reasoning_dataset(name, stage, fmt, train_size, test_size, seed, terse_fraction)
    task = name[len(SYNTHETIC_PREFIX):]
    if task != "mix" and task not in TASKS:
        raise ValueError(f"Unknown synthetic dataset {name!r}. Choose from: "
                         f"{', '.join(SYNTHETIC_PREFIX + t for t in ('mix',) + TASKS + (MIX,) + REASONING)}.")
    tasks = TASKS if task == "mix" else (task,)
    splits = {split: format_examples(make_task_examples(tasks, n, split, seed), stage, fmt or "conversational")
              for split, n in (("train", train_size), ("test", test_size))}
    return DatasetDict({split: Dataset.from_list(rows) for split, rows in splits.items()})


def answer_of(completion) -> str:
    """The text of a completion, whether a string or a list of chat messages (TRL passes either)."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")
    return str(completion).strip()


def is_correct(completion, answer: str) -> bool:
    """The completion is the answer, or (worked solutions) its `#### answer` line is."""
    from .reasoning import ANSWER_MARK
    from .reasoning import is_correct as final_answer_is

    return final_answer_is(completion, answer) if ANSWER_MARK in answer_of(completion) else \
        answer_of(completion) == str(answer).strip()


# ---------------------------------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------------------------------


def load_post_dataset(name: str, stage: str, config: str | None = None, train_split: str = "train",
                      test_split: str = "test", test_size: float = 0.05, seed: int = 0, terse_fraction: float = 0.0):
    """DatasetDict with `train_split` (and `test_split`, split off the training data when missing) for `stage`.
    `terse_fraction`: see `openllm.data.reasoning.make_reasoning_examples` (synthetic reasoning data only)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if not name:
        raise ValueError("No dataset given: set `dataset_name` to a Hub id, a local file/folder, or `openllm:mix`.")
    from .reasoning import is_reasoning_dataset

    if terse_fraction and not is_reasoning_dataset(name):
        raise ValueError(f"terse_fraction={terse_fraction} applies to the synthetic reasoning data "
                         f"(openllm:reasoning, openllm:addition-cot, openllm:word-problems), not to {name}: set "
                         f"terse_fraction: 0.")
    if name.startswith(SYNTHETIC_PREFIX):
        dataset = synthetic_dataset(name, stage, fmt=config, terse_fraction=terse_fraction)
    elif Path(name).exists():
        path = Path(name)
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            dataset = load_from_disk(str(path))
        else:
            files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _LOCAL_BUILDERS)
            if not files or files[0].suffix not in _LOCAL_BUILDERS:
                raise ValueError(f"{name}: expected a {'/'.join(_LOCAL_BUILDERS)} file, a folder of them, or a "
                                 "folder written by `Dataset.save_to_disk`.")
            builder = _LOCAL_BUILDERS[files[0].suffix]
            # files named after a split (train.jsonl, test.jsonl) become those splits
            by_split = {p.stem: str(p) for p in files if p.stem in (train_split, test_split)}
            data_files = by_split if train_split in by_split else {train_split: [str(p) for p in files]}
            dataset = load_dataset(builder, data_files=data_files)
    else:
        dataset = load_dataset(name, name=config)
    if not isinstance(dataset, DatasetDict):
        dataset = DatasetDict({train_split: dataset})
    from .reasoning import convert_question_answer

    dataset = convert_question_answer(dataset, stage, fmt=config)  # GSM8K-style `question` + `answer` (#### final)
    if train_split not in dataset:
        raise ValueError(f"{name} has no split {train_split!r} (it has {list(dataset)}): set `dataset_train_split`.")
    if test_split not in dataset:
        parts = dataset[train_split].train_test_split(test_size=test_size, seed=seed)
        dataset = DatasetDict({train_split: parts["train"], test_split: parts["test"]})
    for split in (train_split, test_split):
        check_dataset(dataset[split], stage, name=f"{name} [{split}]")
    return dataset


def _check_messages(value, column: str, where: str, need_assistant: bool = False):
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: `{column}` must be a non-empty list of {{'role', 'content'}} messages, "
                         f"got {type(value).__name__}: {str(value)[:80]!r}.")
    for message in value:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: every message in `{column}` needs a 'role' and a 'content', got "
                             f"{str(message)[:80]!r}.")
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"{where}: unknown role {message['role']!r} in `{column}`; use system, user, assistant "
                             "or tool.")
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        raise ValueError(f"{where}: `{column}` has no assistant message, so there is nothing to learn from.")


def _check_text_or_messages(value, column: str, where: str, need_assistant: bool = False) -> str:
    if isinstance(value, str):
        return "standard"
    _check_messages(value, column, where, need_assistant)
    return "conversational"


def check_dataset(dataset, stage: str, name: str = "dataset", rows: int = 8) -> str:
    """Fail with a clear message unless `dataset` is in a TRL format `stage` can train on; return that format:
    "messages", "prompt-completion", "text", "preference" or "prompt"."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose from {', '.join(STAGES)}.")
    columns = set(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty.")
    sample = [dataset[i] for i in range(min(rows, len(dataset)))]
    have = f"it has columns {sorted(columns)}"
    if stage == "sft":
        if "messages" in columns:
            for i, row in enumerate(sample):
                _check_messages(row["messages"], "messages", f"{name} row {i}", need_assistant=True)
            return "messages"
        if "prompt" in columns or "completion" in columns:
            missing = {"prompt", "completion"} - columns
            if missing:
                raise ValueError(f"{name}: prompt-completion data needs a `{missing.pop()}` column; {have}.")
            for i, row in enumerate(sample):
                kinds = {_check_text_or_messages(row["prompt"], "prompt", f"{name} row {i}"),
                         _check_text_or_messages(row["completion"], "completion", f"{name} row {i}")}
                if len(kinds) > 1:
                    raise ValueError(f"{name} row {i}: `prompt` and `completion` must both be strings or both be "
                                     "message lists.")
            return "prompt-completion"
        if "text" in columns:
            if not all(isinstance(row["text"], str) for row in sample):
                raise ValueError(f"{name}: the `text` column must hold strings.")
            return "text"
        raise ValueError(f"{name} is not an SFT dataset: expected a `messages` column (conversations), `prompt` + "
                         f"`completion`, or `text`; {have}.")
    if stage in ("dpo", "reward"):
        missing = [c for c in ("chosen", "rejected") if c not in columns]
        if missing:
            raise ValueError(f"{name} is not a preference dataset: missing column(s) {missing} (expected `chosen` "
                             f"and `rejected`, with an optional `prompt`); {have}.")
        for i, row in enumerate(sample):
            where = f"{name} row {i}"
            fields = ["prompt", "chosen", "rejected"] if "prompt" in columns else ["chosen", "rejected"]
            kinds = {_check_text_or_messages(row[f], f, where, need_assistant=(f != "prompt" and "prompt" not in
                                                                                columns)) for f in fields}
            if len(kinds) > 1:
                raise ValueError(f"{where}: {', '.join(f'`{f}`' for f in fields)} must all be strings or all be "
                                 "message lists.")
        return "preference"
    if "prompt" not in columns:
        raise ValueError(f"{name} is not a prompt dataset: RLHF needs a `prompt` column; {have}.")
    for i, row in enumerate(sample):
        _check_text_or_messages(row["prompt"], "prompt", f"{name} row {i}")
    return "prompt"


# ---------------------------------------------------------------------------------------------------------------------
# A small tokenizer for the synthetic tasks
# ---------------------------------------------------------------------------------------------------------------------

def make_example_tokenizer(texts=None, vocab_size: int = 384):
    """Byte-level BPE (digits split one by one) trained on the synthetic tasks unless `texts` are given, with
    OpenLLM's special tokens and chat template (`openllm.data.tokenizer`), the same as every pretrained OpenLLM
    tokenizer; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .tokenizer import ALL_SPECIAL_TOKENS, wrap_tokenizer

    if texts is None:
        texts = [f"Question: {e['prompt']}\nAnswer: {e['answer']} {e['wrong']}" for e in make_task_examples(n=3000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ALL_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer)


# ---------------------------------------------------------------------------------------------------------------------
# python -m openllm.data.post_training
# ---------------------------------------------------------------------------------------------------------------------


def write_example_datasets(output_dir, train_size: int = 2000, test_size: int = 200, tasks=TASKS,
                           fmt: str = "conversational", seed: int = 0) -> dict[str, Path]:
    """Write `<output_dir>/<stage>/{train,test}.jsonl` for sft, preference (dpo and reward) and rlhf."""
    output_dir = Path(output_dir)
    written = {}
    for stage, folder in (("sft", "sft"), ("dpo", "preference"), ("rlhf", "prompts")):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", train_size), ("test", test_size)):
            rows = format_examples(make_task_examples(tasks, n, split, seed), stage, fmt)
            path = output_dir / folder / f"{split}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        written[folder] = output_dir / folder
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--format", default="conversational", choices=FORMATS)
    args = parser.parse_args(argv)
    for folder, path in write_example_datasets(args.output_dir, args.train_size, args.test_size, args.tasks,
                                               args.format).items():
        print(f"{folder:<10} {path}/{{train,test}}.jsonl")


if __name__ == "__main__":
    main()
