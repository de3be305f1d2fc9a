import pytest


@pytest.fixture(scope="session")
def tokenizer(task_tokenizer):
    return task_tokenizer


@pytest.fixture(scope="session")
def tiny_moe_base(tmp_path_factory, task_tokenizer):
    from openllm.training.posttrain import init_base

    folder = tmp_path_factory.mktemp("tiny-moe-base")
    init_base(folder, "tiny-moe", tokenizer=task_tokenizer)
    return folder
