import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from openllm.post_data import make_example_tokenizer

    return make_example_tokenizer()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tokenizer):
    from openllm.posttrain import init_base

    folder = tmp_path_factory.mktemp("tiny-base")
    init_base(folder, "tiny", tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="session")
def tiny_moe_base(tmp_path_factory, tokenizer):
    from openllm.posttrain import init_base

    folder = tmp_path_factory.mktemp("tiny-moe-base")
    init_base(folder, "tiny-moe", tokenizer=tokenizer)
    return folder
