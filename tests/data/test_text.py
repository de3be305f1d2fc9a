import json

import pytest
from helpers.tiny_lm import CORPUS

from openllm.data.text import load_eval_texts


@pytest.fixture
def eval_jsonl(tmp_path):
    path = tmp_path / "held_out.jsonl"
    rows = [{"text": t, "id": i} for i, t in enumerate(CORPUS[:6])] + [{"text": "   ", "id": 6}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_eval_texts(tmp_path, eval_jsonl):
    texts, split = load_eval_texts(str(eval_jsonl))
    assert (texts, split) == (CORPUS[:6], "train")  # the blank row is dropped
    assert load_eval_texts(str(eval_jsonl), max_samples=2)[0] == CORPUS[:2]
    txt = tmp_path / "corpus.txt"
    txt.write_text("first paragraph\nstill first\n\n\nsecond\n\n", encoding="utf-8")
    assert load_eval_texts(str(txt))[0] == ["first paragraph\nstill first", "\nsecond"]
    md = tmp_path / "notes.md"
    md.write_text("# Title\n\nbody  \n", encoding="utf-8")
    assert load_eval_texts(str(md))[0] == ["# Title", "body  \n"]  # read as written: bytes count as they are

    with pytest.raises(ValueError, match="Column 'content' is not in .*its columns are text, id"):
        load_eval_texts(str(eval_jsonl), text_column="content")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(ValueError, match="has no non-empty text"):
        load_eval_texts(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_eval_texts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="single split, 'train'"):
        load_eval_texts(str(eval_jsonl), split="validation")
