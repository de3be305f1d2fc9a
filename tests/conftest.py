import os
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # tests run against this checkout, installed or not
    sys.path.insert(0, str(SRC))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


# a tiny trained-tokenizer model shared by the evaluation, generation and model-card tests
@pytest.fixture(scope="session")
def lm_tokenizer():
    from helpers.tiny_lm import train_tokenizer

    return train_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, lm_tokenizer):
    from helpers.tiny_lm import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(folder, lm_tokenizer)
    return folder


# the small tokenizer of the synthetic post-training tasks
@pytest.fixture(scope="session")
def task_tokenizer():
    from openllm.tasks import make_example_tokenizer

    return make_example_tokenizer()


# an untrained `tiny` OpenLLM model with the task tokenizer: the start of the post-training recipes' tests
@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, task_tokenizer):
    from openllm.training.posttrain import init_base

    folder = tmp_path_factory.mktemp("tiny-base")
    init_base(folder, "tiny", tokenizer=task_tokenizer)
    return folder
