"""Post-training data in TRL's standard formats: loading it from the Hub or local files, turning examples into the
format of each stage, and checking a dataset before training on it. Synthetic checkable tasks live in `openllm.tasks`.

    dataset_name: data/sft.jsonl       # local .json/.jsonl/.csv/.parquet file, folder of them, or save_to_disk folder
    dataset_name: trl-lib/Capybara     # a Hub dataset

Formats per stage (TRL's names): `sft` takes `messages`, `prompt`+`completion` or `text`; `dpo` and `reward` take
`chosen`+`rejected` (with an explicit `prompt` or a prompt shared inside conversational pairs); `rlhf` takes
`prompt`. Any other column (e.g. `answer`) is passed through, and reward functions receive it.
"""

from pathlib import Path

from datasets import DatasetDict, load_dataset, load_from_disk
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .tokenizer import ALL_SPECIAL_TOKENS, wrap_tokenizer

STAGES = ("sft", "dpo", "reward", "rlhf")
FORMATS = ("conversational", "standard")
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


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



# ---------------------------------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------------------------------


def load_raw_dataset(name: str, config: str | None = None, train_split: str = "train", test_split: str = "test"):
    """DatasetDict of a local file, folder of files, `save_to_disk` folder, or Hub dataset, as it is stored."""
    if Path(name).exists():
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
    return dataset if isinstance(dataset, DatasetDict) else DatasetDict({train_split: dataset})


def split_and_check(dataset, stage: str, name: str, train_split: str = "train", test_split: str = "test",
                    test_size: float = 0.05, seed: int = 0):
    """`dataset` with `train_split` and `test_split` (split off the training data when missing), both checked for
    `stage` (see `check_dataset`)."""
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
# A small tokenizer for small data
# ---------------------------------------------------------------------------------------------------------------------


def train_example_tokenizer(texts, vocab_size: int = 384):
    """Byte-level BPE (digits split one by one) trained on `texts`, with OpenLLM's special tokens and chat template
    (`openllm.data.tokenizer`), the same as every pretrained OpenLLM tokenizer; returns a `PreTrainedTokenizerFast`.
    `openllm.tasks.make_example_tokenizer` trains one on the synthetic tasks."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ALL_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tokenizer)
