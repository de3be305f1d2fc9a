"""`openllm prepare` and the prepared folder: what it writes, counts, refuses and resumes, on real tiny corpora with a
real tokenizer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from openllm.data.arguments import DataArguments
from openllm.data.packing import best_fit_rows
from openllm.data.prepare import PrepareArguments, prepare, split_and_deduplicate
from openllm.data.prepared import PreparedDataset, check_compatible
from openllm.models.loading import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}


def write_jsonl(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two sources: 1,500 documents with 100 repeated, and 500 others; and a tokenizer trained on them."""
    from helpers.text import sentences

    from openllm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("prepare")
    docs = sentences(2000, seed=1)
    a = write_jsonl(root / "a.jsonl", docs[:1500] + docs[:100])
    b = write_jsonl(root / "b.jsonl", docs[1500:])
    train_tokenizer(docs, 400, "bpe", output_dir=str(root / "tok"), length=len(docs))
    return root, a, b


def args(corpus, **kwargs) -> DataArguments:
    root, a, _ = corpus
    settings = dict(dataset_name=str(a), text_column="text", tokenizer_name_or_path=str(root / "tok"), block_size=64,
                    eval_tokens=1500, num_proc=2)
    return DataArguments(**{**settings, **kwargs})


def prepared(corpus, name: str, **kwargs) -> Path:
    out = corpus[0] / name
    prepare(args(corpus, **kwargs), PrepareArguments(output_dir=str(out), shard_bytes=20_000))
    return out


def rows_of(dataset) -> list[tuple]:
    return [tuple(dataset[i]["input_ids"].tolist()) for i in range(len(dataset))]


def test_manifest_counts_every_document_and_token(corpus):
    out = prepared(corpus, "concat")
    manifest = json.loads((out / "manifest.json").read_text())
    stats, settings = manifest["stats"], manifest["settings"]
    assert stats["documents_in"] == 1600 and stats["duplicates"] == 100 and stats["dropped_short"] == 0
    assert stats["train_documents"] + stats["eval_documents"] == 1500
    assert 1500 <= stats["eval_tokens"] < 1500 + 200  # whole documents, until eval_tokens
    assert stats["rows"] * 64 + stats["tokens_cropped"] == stats["train_tokens"]
    assert settings["tokenizer"]["name_or_path"] == str(corpus[0] / "tok") and len(settings["tokenizer"]["hash"]) == 16
    assert settings["block_size"] == 64 and settings["dtype"] == "uint16"
    assert len(manifest["train_shards"]) > 3  # several shards, tokenized in parallel
    assert not (out / ".work").exists() and (out / "tokenizer" / "tokenizer.json").exists()

    # the rows are the documents' tokens, each followed by EOS, end to end
    tokenizer = load_tokenizer(str(corpus[0] / "tok"))
    train = PreparedDataset(out, "train")
    assert len(train) == stats["rows"]
    first = train[0]["input_ids"].tolist()
    assert first.count(tokenizer.eos_token_id) >= 1
    assert tokenizer.decode(first).startswith(tokenizer.decode(first[: first.index(tokenizer.eos_token_id)]))
    evaluation = PreparedDataset(out, "eval")
    assert len(evaluation) == stats["eval_rows"] == stats["eval_tokens"] // 64
    assert len(evaluation.eval_texts()) == stats["eval_documents"]
    # held-out documents never appear in training rows
    held_out = {tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in evaluation.eval_texts()}
    stream = np.concatenate([np.memmap(out / f"{s['file']}.bin", np.uint16, mode="r") for s in
                             manifest["train_shards"]]).tolist()
    text = tokenizer.decode(stream)
    assert not any(tokenizer.decode(list(doc)) in text for doc in list(held_out)[:20])


def test_rerun_changes_nothing_and_other_settings_are_refused(corpus):
    out = prepared(corpus, "rerun")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    prepared(corpus, "rerun")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    refusal = r"prepared with other settings \(block_size differ\).*--overwrite_output_dir"
    with pytest.raises(ValueError, match=refusal):
        prepared(corpus, "rerun", block_size=32)


def test_training_refuses_another_tokenizer_or_block_size(corpus, lm_tokenizer):
    out = prepared(corpus, "concat")
    manifest = json.loads((out / "manifest.json").read_text())
    check_compatible(manifest, load_tokenizer(str(corpus[0] / "tok")), 64)
    with pytest.raises(ValueError, match="prepared with block_size 64, but this run asks for 128"):
        check_compatible(manifest, load_tokenizer(str(corpus[0] / "tok")), 128)
    with pytest.raises(ValueError, match="tokenized by another tokenizer"):
        check_compatible(manifest, lm_tokenizer, 64)


def test_deduplication_in_many_small_ranges_labels_as_in_one(corpus, tmp_path):
    """A memory budget far below the hashes' size cuts the work into many hash ranges: the same labels."""
    root = corpus[0]
    work = tmp_path / "work"
    prepare_args = args(corpus)
    from openllm.data import prepare as module

    tokenizer = load_tokenizer(str(root / "tok"))
    module._init_worker(str(root / "tok" / "tokenizer.json"), tokenizer.eos_token_id, "uint16", 32)
    texts = [json.loads(line)["text"] for line in Path(prepare_args.dataset_name).read_text().splitlines()]
    shards = []
    for k in range(4):
        module._tokenize_shard(str(work / f"{k}"), texts[k::4])
        shards.append(work / f"{k}")
    one = split_and_deduplicate(shards, 1500, memory_budget=1 << 30)
    labels_one = [np.fromfile(s / "labels.u8", np.uint8) for s in shards]
    many = split_and_deduplicate(shards, 1500, memory_budget=2_000)  # ~50 records per range
    labels_many = [np.fromfile(s / "labels.u8", np.uint8) for s in shards]
    assert one == many and one["duplicates"] == 100
    assert all((a == b).all() for a, b in zip(labels_one, labels_many))


def test_mixture_follows_the_weights(corpus):
    root, a, b = corpus
    mixture = [{"id": str(a), "weight": 1.0}, {"id": str(b), "weight": 3.0}]
    out = prepared(corpus, "mixture", dataset_mixture=mixture)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {s["id"]: s["rows"] for s in manifest["sources"]}
    assert rows[str(a)] > 2 * rows[str(b)]  # a is the bigger source...
    train = PreparedDataset(out, "train", seed=0)
    shares = train.mixture()
    assert shares[str(b)] == pytest.approx(0.75, abs=0.002) and shares[str(a)] == pytest.approx(0.25, abs=0.002)
    assert len(train) == sum(rows.values())  # ...yet b, upsampled, gives three quarters of the rows
    assert rows_of(train) == rows_of(PreparedDataset(out, "train", seed=0))  # deterministic by seed
    assert rows_of(train) != rows_of(PreparedDataset(out, "train", seed=1))


def test_best_fit_rows_start_at_documents_and_account_for_every_token():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=3000)
    starts, segments, stats = best_fit_rows(lengths, 128)
    doc_starts = set(np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist())
    piece_starts = {int(s + j * 128) for s, n in zip(sorted(doc_starts), lengths) for j in range(n // 128 + 1)}
    assert all(segments[starts[r]:starts[r + 1], 1].sum() == 128 for r in range(stats["rows"]))
    assert all(int(segments[starts[r], 0]) in piece_starts for r in range(stats["rows"]))  # BOS-aligned
    ordered = segments[np.argsort(segments[:, 0])]
    assert (ordered[1:, 0] >= ordered[:-1, 0] + ordered[:-1, 1]).all()  # no token used twice
    assert stats["rows"] * 128 + stats["tokens_cropped"] == lengths.sum() and stats["tokens_padded"] == 0
    assert stats["tokens_cropped"] / lengths.sum() < 0.01


def test_best_fit_prepared_rows_hold_whole_documents(corpus):
    out = prepared(corpus, "best-fit", packing="best_fit")
    manifest = json.loads((out / "manifest.json").read_text())
    tokenizer = load_tokenizer(str(corpus[0] / "tok"))
    train = PreparedDataset(out, "train")
    assert len(train) == manifest["stats"]["rows"]
    assert manifest["stats"]["rows"] * 64 + manifest["stats"]["tokens_cropped"] == manifest["stats"]["train_tokens"]
    assert manifest["stats"]["share_cropped"] == pytest.approx(manifest["stats"]["tokens_cropped"]
                                                               / manifest["stats"]["train_tokens"])
    texts = {json.loads(line)["text"] for line in corpus[1].read_text().splitlines()}
    row = train[0]["input_ids"].tolist()
    first_document = tokenizer.decode(row[: row.index(tokenizer.eos_token_id)])
    assert first_document in texts  # a row starts with a whole document


def test_a_killed_preparation_resumes_to_the_same_folder(corpus, tmp_path):
    from helpers.text import sentences

    source = write_jsonl(tmp_path / "big.jsonl", sentences(12000, seed=3))
    command = [sys.executable, "-m", "openllm", "prepare", "--dataset_name", source, "--text_column", "text",
               "--tokenizer_name_or_path", corpus[0] / "tok", "--block_size", "64", "--eval_tokens", "1000",
               "--num_proc", "1", "--shard_bytes", "20000"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    first = subprocess.run([*map(str, command), "--output_dir", str(whole)], env=ENV, capture_output=True)
    assert first.returncode == 0
    process = subprocess.Popen([*map(str, command), "--output_dir", str(killed)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = killed / ".work" / "source-0"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("0000[0-9]"))) < 3:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in shards.glob("[0-9]*"))
    assert 3 <= len(done) and not (killed / "manifest.json").exists()
    result = subprocess.run([*map(str, command), "--output_dir", str(killed)], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, killed))
    assert a["stats"] == b["stats"] and a["train_shards"] == b["train_shards"]
    for shard in a["train_shards"]:
        assert (whole / f"{shard['file']}.bin").read_bytes() == (killed / f"{shard['file']}.bin").read_bytes()
    assert (whole / "eval" / "tokens.bin").read_bytes() == (killed / "eval" / "tokens.bin").read_bytes()


def test_prepare_command_reads_a_pretraining_yaml_and_says_what_is_missing(corpus, tmp_path):
    import yaml

    root, a, _ = corpus
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(yaml.safe_dump({"dataset_name": str(a), "text_column": "text", "block_size": 64,
                                      "tokenizer_name_or_path": str(root / "tok"), "eval_tokens": 1000,
                                      "prepared_data_dir": str(tmp_path / "from-yaml"), "output_dir": "model-folder",
                                      "learning_rate": 1e-3, "max_steps": 10}))
    run = subprocess.run([sys.executable, "-m", "openllm", "prepare", "--config", str(recipe)], env=ENV,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "from-yaml" / "manifest.json").exists() and not (tmp_path / "model-folder").exists()
    assert "training tokens" in run.stdout
    missing = subprocess.run([sys.executable, "-m", "openllm", "prepare", "--dataset_name", str(a),
                              "--output_dir", str(tmp_path / "x")], env=ENV, capture_output=True, text=True)
    assert missing.returncode == 2 and "needs a tokenizer: --tokenizer_name_or_path" in missing.stderr


@pytest.mark.parametrize("name", ["pretrain_small", "pretrain_medium", "pretrain_large"])
def test_the_big_recipes_prepare_their_data_from_a_stream(name):
    from helpers.recipes import RECIPES

    from openllm.data.prepare import make_parser

    data, options = make_parser().parse_args_and_config(["--config", str(RECIPES / f"{name}.yaml")])
    assert data.dataset_name == "HuggingFaceFW/fineweb-edu" and data.streaming and data.tokenizer_name_or_path
    assert data.prepared_data_dir.startswith("data/fineweb-edu") and data.eval_tokens >= 1 << 20
    assert options.output_dir is None  # the recipe's output_dir is the model's, not the shards'
