"""The task registry: every dataset name the recipes use resolves to a task, and a wrong name lists the right ones."""

import json

import pytest

from openllm.tasks import REGISTRY, get_task, load_post_dataset, make_task_examples, write_datasets
from openllm.tasks.common import TaskMixture


def test_every_name_resolves_with_or_without_the_prefix():
    assert list(REGISTRY) == ["mix", "addition", "parity", "reverse", "reasoning", "addition-cot", "word-problems"]
    for name, task in REGISTRY.items():
        assert get_task(f"openllm:{name}") is task is get_task(name)
    pair = get_task("addition,parity")
    assert isinstance(pair, TaskMixture) and pair.examples("test", 4) == make_task_examples(("addition", "parity"),
                                                                                            4, "test")


def test_unknown_names_fail_with_the_valid_ones():
    valid = ("openllm:mix, openllm:addition, openllm:parity, openllm:reverse, openllm:reasoning, "
             "openllm:addition-cot, openllm:word-problems")
    with pytest.raises(ValueError, match=f"Unknown task 'openllm:division'. Choose from: {valid}."):
        get_task("openllm:division")
    with pytest.raises(ValueError, match="Unknown task 'openllm:division'"):
        load_post_dataset("openllm:division", "sft")
    with pytest.raises(ValueError, match=r"A mixture draws from one family of tasks; 'addition,addition-cot' mixes "
                                         r"\['arithmetic', 'reasoning'\]"):
        get_task("addition,addition-cot")
    with pytest.raises(ValueError, match="Unknown synthetic task"):
        make_task_examples(("division",))


def test_write_datasets_writes_every_stage(tmp_path):
    written = write_datasets(tmp_path, "openllm:parity", train_size=4, test_size=2)
    assert sorted(written) == ["preference", "prompts", "sft"]
    rows = [json.loads(line) for line in (tmp_path / "preference" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"prompt", "chosen", "rejected", "answer", "task"} <= set(rows[0])
