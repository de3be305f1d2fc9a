"""Fixtures for the evaluation, generation and model-card tests."""

import json

import pytest
from eval_helpers import CORPUS, save_tiny_model, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(folder, tokenizer)
    return folder


@pytest.fixture(scope="session")
def eval_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.jsonl"
    rows = [{"text": t, "id": i} for i, t in enumerate(CORPUS[:6])] + [{"text": "   ", "id": 6}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
