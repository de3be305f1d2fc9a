import pytest


@pytest.fixture(scope="session")
def tokenizer(task_tokenizer):
    return task_tokenizer
