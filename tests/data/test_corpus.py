import json
import random

import pandas as pd
import pytest

from openllm.data.corpus import (
    BUILTIN_CORPUS,
    load_corpus,
    load_documents,
    normalize_whitespace,
    pack_corpus,
    python_docs_corpus,
)
from openllm.data.tokenizer import train_tokenizer

UNIQUE = [f"Document number {i} talks about topic {i * 7 % 11} at some length, enough to be kept." for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def messy_rows():
    rows = [{"text": t, "id": i} for i, t in enumerate(UNIQUE)]
    rows += [{"text": UNIQUE[0] + "   \n\n\n\n", "id": 10},  # duplicates once whitespace is normalised
             {"text": UNIQUE[3], "id": 11}, {"text": "\r\n" + UNIQUE[5], "id": 12},
             {"text": "too short", "id": 13}, {"text": "   \n  ", "id": 14}, {"text": "", "id": 15}]
    return rows


def test_normalize_whitespace():
    assert normalize_whitespace("  a  \r\nb\t \n\n\n\n\nc \n") == "a\nb\n\nc"
    assert normalize_whitespace("def f():\n    return 1   \n") == "def f():\n    return 1"


def test_counts_dedup_and_split(tmp_path, messy_rows):
    corpus = load_corpus(write_jsonl(tmp_path / "d.jsonl", messy_rows), eval_fraction=0.2)
    assert corpus.stats == {"documents_in": 16, "dropped_short": 3, "duplicates": 3, "documents": 10,
                            "characters": sum(map(len, UNIQUE)), "train_documents": 8, "eval_documents": 2}
    train, held_out = list(corpus.train["text"]), list(corpus.eval["text"])
    assert sorted(train + held_out) == sorted(UNIQUE) and not set(train) & set(held_out)

    # the held-out documents depend on the documents only, not on their order
    shuffled = messy_rows[:]
    random.Random(1).shuffle(shuffled)
    again = load_corpus(write_jsonl(tmp_path / "shuffled.jsonl", shuffled), eval_fraction=0.2)
    assert sorted(again.eval["text"]) == sorted(held_out)


def test_local_formats_folders_and_globs(tmp_path):
    docs = UNIQUE[:6]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("\n\n".join(docs[:2]) + "\n")
    write_jsonl(tmp_path / "a" / "y.jsonl", [{"body": d} for d in docs[2:3]])
    (tmp_path / "a" / "z.json").write_text(json.dumps([{"body": docs[3]}]))
    pd.DataFrame({"body": [docs[4]]}).to_csv(tmp_path / "a" / "w.csv", index=False)
    pd.DataFrame({"body": [docs[5]]}).to_parquet(tmp_path / "a" / "v.parquet")
    folder = load_documents(str(tmp_path / "a"), text_column="body")
    assert sorted(t.strip() for t in folder["text"]) == sorted(docs)  # .txt: one document per paragraph
    assert sorted(load_documents(str(tmp_path / "a" / "*.[jc]s*"), text_column="body")["text"]) == sorted(docs[2:5])
    assert list(load_documents(str(tmp_path / "a" / "x.txt"), sample_by="document")["text"]) == [
        "\n\n".join(docs[:2]) + "\n"]


def test_errors_are_explicit(tmp_path, messy_rows):
    with pytest.raises(FileNotFoundError, match="No file or folder matches"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    path = write_jsonl(tmp_path / "d.jsonl", messy_rows)
    with pytest.raises(ValueError, match=r"Column 'body' not found .*available columns: \['text', 'id'\]"):
        load_corpus(path, text_column="body")
    with pytest.raises(ValueError, match=r"Column 'id' .* holds int64, not text. Text columns: \['text'\]"):
        load_corpus(path, text_column="id")
    with pytest.raises(ValueError, match="all 16 are shorter than min_chars=1000"):
        load_corpus(path, min_chars=1000)
    with pytest.raises(RuntimeError, match="Could not load the Hub dataset 'openllm-tests/no-such-dataset'"):
        load_corpus("openllm-tests/no-such-dataset")


def test_tokenize_and_pack_counts(tmp_path):
    tokenizer = train_tokenizer(UNIQUE, vocab_size=200, tokenizer_type="char", show_progress=False)
    corpus = load_corpus(write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in UNIQUE]), eval_fraction=0.2)
    train, held_out = pack_corpus(corpus, tokenizer, block_size=16)
    s = corpus.stats
    # one token per character plus one EOS per document
    assert s["train_tokens"] == sum(len(t) + 1 for t in corpus.train["text"])
    assert s["train_blocks"] == len(train) == s["train_tokens"] // 16
    assert s["tokens_dropped"] == s["train_tokens"] % 16 + s["eval_tokens"] % 16
    assert s["eval_tokens_per_byte"] == s["eval_tokens"] / s["eval_bytes"]
    assert all(len(ids) == 16 for ids in train["input_ids"])
    eos = tokenizer.eos_token_id
    stream = [i for block in train["input_ids"] for i in block]
    expected = [i for t in corpus.train["text"] for i in tokenizer(t)["input_ids"] + [eos]]
    assert stream == expected[: len(stream)]
    # with several processes each shard packs its own documents: the same token stream, cut per shard
    train2, _ = pack_corpus(load_corpus(corpus.source, eval_fraction=0.2, num_proc=2), tokenizer, 16, num_proc=2)
    assert len(train) - 1 <= len(train2) <= len(train)
    text = "," + ",".join(map(str, expected)) + ","
    assert all("," + ",".join(map(str, block)) + "," in text for block in train2["input_ids"])
    with pytest.raises(ValueError, match="fewer than one block of 4096"):
        pack_corpus(corpus, tokenizer, block_size=4096)


def test_builtin_corpus_is_offline_and_deterministic():
    docs = python_docs_corpus(packages=["json"])
    texts = list(docs["text"])
    assert texts == list(python_docs_corpus(packages=["json"])["text"])
    assert texts[0].startswith("json\n\nJSON (JavaScript Object Notation)")
    assert all(t.split("\n", 1)[0].startswith("json") for t in texts)
    assert "json.dumps\n\nSerialize ``obj`` to a JSON formatted ``str``." in "\n".join(texts)
    assert BUILTIN_CORPUS == "builtin:python-docs"
