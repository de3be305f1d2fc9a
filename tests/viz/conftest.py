import pytest
from viz_helpers import tiny


@pytest.fixture(scope="module")
def dense_model(lm_tokenizer):
    return tiny(lm_tokenizer, "tiny")


@pytest.fixture(scope="module")
def moe_model(lm_tokenizer):
    return tiny(lm_tokenizer, "tiny-moe", seed=1)


@pytest.fixture(scope="module")
def moe_model_dir(tmp_path_factory, lm_tokenizer, moe_model):
    folder = tmp_path_factory.mktemp("tiny-moe")
    moe_model.save_pretrained(folder)
    lm_tokenizer.save_pretrained(folder)
    return folder
