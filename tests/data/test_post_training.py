"""Dataset loading, the TRL formats per stage, and the format errors raised before training."""

import pytest
from datasets import Dataset
from helpers.recipes import write_jsonl

from openllm.data.post_training import check_dataset, format_examples, load_raw_dataset, split_and_check
from openllm.tasks import load_post_dataset, make_task_examples


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
    raw = load_raw_dataset(str(tmp_path / "data" / "train.jsonl"))  # as stored: one split, nothing checked
    assert list(raw) == ["train"] and len(raw["train"]) == 20
    with pytest.raises(ValueError, match=r"has no split 'validation' \(it has \['train'\]\)"):
        split_and_check(raw, "sft", "train.jsonl", train_split="validation")


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
