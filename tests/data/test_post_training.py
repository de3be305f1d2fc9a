"""Synthetic checkable tasks, dataset loading and the format errors raised before training."""

import pytest
from datasets import Dataset
from helpers.recipes import write_jsonl

from openllm.data.post_training import (
    TASKS,
    check_dataset,
    format_examples,
    is_correct,
    load_post_dataset,
    make_task_examples,
    synthetic_dataset,
)
from openllm.training.rewards import REWARD_FUNCS, get_reward_funcs


def _solve(prompt: str) -> str:
    words = prompt.rstrip("?.").split()
    if prompt.startswith("What is"):
        return str(int(words[2]) + int(words[4]))
    if prompt.startswith("Is"):
        return "even" if int(words[1]) % 2 == 0 else "odd"
    return words[-1][::-1]


def test_tasks_are_checkable_and_splits_disjoint():
    train = make_task_examples(TASKS, 600, "train")
    test = make_task_examples(TASKS, 150, "test")
    for ex in train + test:
        assert ex["answer"] == _solve(ex["prompt"]) != ex["wrong"]
    assert {e["task"] for e in train} == set(TASKS)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert make_task_examples(TASKS, 50, "train") == train[:50]  # deterministic


def test_preference_pairs_chosen_correct_rejected_wrong():
    ds = synthetic_dataset("openllm:mix", "dpo", train_size=60, test_size=10)
    for row in ds["train"]:
        assert is_correct(row["chosen"], row["answer"]) and not is_correct(row["rejected"], row["answer"])
    assert check_dataset(ds["train"], "dpo") == "preference"
    standard = synthetic_dataset("openllm:addition", "sft", fmt="standard", train_size=5, test_size=5)["train"]
    assert check_dataset(standard, "sft") == "prompt-completion" and isinstance(standard[0]["prompt"], str)


@pytest.mark.parametrize("stage, rows, message", [
    ("sft", [{"question": "q", "answer": "a"}], r"expected a `messages` column .* columns \['answer', 'question'\]"),
    ("sft", [{"prompt": "q"}], "needs a `completion` column"),
    ("sft", [{"messages": [{"role": "user", "content": "hi"}]}], "no assistant message"),
    ("sft", [{"messages": [{"role": "user", "text": "hi"}]}], "needs a 'role' and a 'content'"),
    ("sft", [{"messages": [{"role": "bot", "content": "hi"}]}], "unknown role 'bot'"),
    ("sft", [{"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]}], "both be strings"),
    ("dpo", [{"prompt": "q", "chosen": "a"}], r"missing column\(s\) \['rejected'\]"),
    ("reward", [{"text": "q"}], r"missing column\(s\) \['chosen', 'rejected'\]"),
    ("rlhf", [{"question": "q"}], "RLHF needs a `prompt` column"),
])
def test_format_errors_name_the_problem(stage, rows, message):
    with pytest.raises(ValueError, match=message):
        check_dataset(Dataset.from_list(rows * 3), stage, name="my.jsonl")


def test_local_jsonl_files_become_splits(tmp_path):
    rows = format_examples(make_task_examples(("parity",), 30), "sft")
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:20])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[20:])
    ds = load_post_dataset(str(tmp_path / "data"), "sft")
    assert (len(ds["train"]), len(ds["test"])) == (20, 10)
    single = load_post_dataset(str(tmp_path / "data" / "train.jsonl"), "sft", test_size=0.25)
    assert (len(single["train"]), len(single["test"])) == (15, 5)  # no test file: split off the training data
    with pytest.raises(ValueError, match="not a preference dataset"):
        load_post_dataset(str(tmp_path / "data"), "dpo")
    with pytest.raises(ValueError, match="Unknown synthetic dataset 'openllm:division'"):
        load_post_dataset("openllm:division", "sft")


def test_chat_template_masks_the_answer_and_its_end_of_turn(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "5<|eos|>"
    assert all(len(tokenizer.encode(d, add_special_tokens=False)) == 1 for d in "0123456789")


def test_post_training_uses_the_pretraining_tokens_and_template(tokenizer):
    """A pretrained model's tokenizer is post-trained as it is: same special tokens, ids and chat template."""
    from openllm.data.tokenizer import CHAT_TEMPLATE, train_tokenizer

    pretrained = train_tokenizer([f"Question {i}: what is {i} + {i}?" for i in range(200)], vocab_size=300,
                                 show_progress=False)
    for tok in (tokenizer, pretrained):
        assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
        assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
        assert tok.chat_template == CHAT_TEMPLATE


def test_reward_registry():
    completions = [[{"role": "assistant", "content": "12"}], [{"role": "assistant", "content": "11 maybe"}]]
    assert REWARD_FUNCS["accuracy"](completions, answer=["12", "12"]) == [1.0, 0.0]
    assert REWARD_FUNCS["closeness"](completions, answer=["12", "12"]) == [1.0, 0.5]
    assert REWARD_FUNCS["digits"](["12", "ab"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="Unknown reward function.*'acuracy'.*Valid names: accuracy, "
                                         "verified_accuracy, closeness"):
        get_reward_funcs(["accuracy", "acuracy"])
