import pytest


@pytest.fixture(scope="session")
def tokenizer(lm_tokenizer):
    return lm_tokenizer
