import json

import pytest
from helpers.tiny_lm import CORPUS


@pytest.fixture(scope="session")
def tokenizer(lm_tokenizer):
    return lm_tokenizer


@pytest.fixture(scope="session")
def eval_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.jsonl"
    rows = [{"text": t, "id": i} for i, t in enumerate(CORPUS[:6])] + [{"text": "   ", "id": 6}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
