"""Pretraining from prepared token shards and from a stream: killed anywhere, a run resumes to the samples of the one
that never stopped; prepared data also on another number of processes (same global batch), a stream refuses that;
every rank reads its own rows."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers.launch import ENV, accelerate_launch, openllm

MICRO = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer, a jsonl corpus, its prepared folder and a local parquet copy for streaming."""
    import datasets
    from helpers.text import sentences

    from openllm.data.arguments import DataArguments
    from openllm.data.prepare import PrepareArguments, prepare
    from openllm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("data-resume")
    texts = sentences(1200, seed=5)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (root / "parquet").mkdir()
    for k in range(4):  # four files: a stream of several shards
        datasets.Dataset.from_dict({"text": texts[k::4]}).to_parquet(str(root / "parquet" / f"part-{k}.parquet"))
    train_tokenizer(texts, 300, "bpe", output_dir=str(root / "tok"), length=len(texts))
    prepare(DataArguments(dataset_name=str(root / "corpus.jsonl"), text_column="text", block_size=32,
                          tokenizer_name_or_path=str(root / "tok"), eval_tokens=600, num_proc=2),
            PrepareArguments(output_dir=str(root / "prepared"), shard_bytes=30_000))
    return root


def recipe(root, name: str, **settings):
    base = {"block_size": 32, "model_preset": "tiny", "model_config_overrides": MICRO, "max_steps": 6,
            "per_device_train_batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 1, "logging_steps": 1,
            "eval_strategy": "no", "save_steps": 2, "final_eval_documents": 0, "disable_tqdm": True,
            "precision": "fp32", "dataloader_num_workers": 0}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **settings}))
    return path


def losses(folder) -> dict[int, float]:
    history = json.loads((folder / "training_summary.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def killed_and_resumed(config, out, *, processes=1, port=29561):
    crash = openllm("step:3", "pretrain", "--config", config, "--output_dir", out, processes=processes, port=port)
    assert crash.returncode != 0 and not (out / "training_summary.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    run = openllm("none", "pretrain", "--config", config, "--output_dir", out, processes=processes, port=port + 1)
    return run


# ---------------------------------------------------------------------------------------------------------------------
# Prepared shards


def uninterrupted(root, name: str, **settings):
    """(recipe, folder) of a run that was never stopped."""
    config, out = recipe(root, name, **settings), root / f"{name}-full"
    run = openllm("none", "pretrain", "--config", config, "--output_dir", out)
    assert run.returncode == 0, run.stderr[-3000:]
    return config, out


@pytest.fixture(scope="module")
def prepared_full(data):
    return uninterrupted(data, "prepared", dataset_name=str(data / "prepared"))


def test_prepared_run_reports_its_data(prepared_full, data):
    _, out = prepared_full
    summary = json.loads((out / "training_summary.json").read_text())
    manifest = json.loads((data / "prepared" / "manifest.json").read_text())
    assert summary["data"]["prepared_data"] == str(data / "prepared")
    assert summary["data"]["mixture"] == {str(data / "corpus.jsonl"): 1.0}
    assert summary["data"]["rows"] == manifest["stats"]["rows"] and summary["data"]["share_cropped"] < 0.01
    assert summary["metrics"]["eval_loss"] < summary["metrics"]["initial_eval_loss"]  # on the held-out rows


def test_prepared_run_killed_resumes_exactly(prepared_full, data, tmp_path):
    config, full = prepared_full
    run = killed_and_resumed(config, tmp_path / "killed")
    assert run.returncode == 0, run.stderr[-3000:]
    assert losses(tmp_path / "killed") == losses(full)


def test_prepared_run_resumes_on_two_ranks_with_the_same_global_batch(prepared_full, tmp_path):
    """1 process × 4, killed after step 3, continues on 2 ranks × 2 as the uninterrupted 1-process run."""
    config, full = prepared_full
    out = tmp_path / "one-then-two"
    crash = openllm("step:3", "pretrain", "--config", config, "--output_dir", out)
    assert crash.returncode != 0 and (out / "checkpoint-2").is_dir()
    refused = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--per_device_train_batch_size", 2)
    assert refused.returncode == 2 and "global_batch_size 4 → 2" in refused.stderr  # another global batch
    run = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--per_device_train_batch_size", 2,
                  processes=2, port=29569)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Resuming from {out / 'checkpoint-2'}" in run.stderr
    assert list(losses(out).values()) == pytest.approx(list(losses(full).values()), rel=1e-5)


def test_every_rank_reads_its_own_rows(data, tmp_path):
    """Two real processes, the Trainer's way (a seeded sampler prepared by accelerate): no row read twice, and one
    epoch covers every row."""
    script = tmp_path / "ranks.py"
    script.write_text(f"""
import json, torch
from accelerate import Accelerator
from openllm.data.prepared import PreparedDataset
class Rows(PreparedDataset):  # each row with its index, to see which rows each rank read
    def __getitem__(self, i):
        return {{**super().__getitem__(i), "row": torch.tensor(i)}}
accelerator = Accelerator(cpu=True)  # as the Trainer on CPU: gloo over both processes
assert accelerator.num_processes == 2
dataset = Rows({str(data / "prepared")!r}, "train", seed=0)
loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True))
rows = [r for batch in loader for r in batch["row"].tolist()]
json.dump([len(dataset), rows], open({str(tmp_path)!r} + f"/rank{{accelerator.process_index}}.json", "w"))
""")
    run = subprocess.run([*accelerate_launch(2, 29571), str(script)], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (n, rank0), (_, rank1) = (json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1))
    assert n > 50 and len(rank0) == len(rank1) == -(-n // 8) * 4
    full = n // 8 * 4  # the rows of complete global batches; accelerate fills the last one with rows from the start
    assert not set(rank0[:full]) & set(rank1[:full]) and len(set(rank0[:full])) == full
    assert set(rank0) | set(rank1) == set(range(n))


# ---------------------------------------------------------------------------------------------------------------------
# A stream


@pytest.fixture(scope="module")
def streamed_full(data):
    return uninterrupted(data, "stream", dataset_name=str(data / "parquet"), text_column="text", streaming=True,
                         tokenizer_name_or_path=str(data / "tok"), eval_tokens=300)


def test_stream_killed_resumes_from_its_position_exactly(streamed_full, tmp_path):
    config, full = streamed_full
    out = tmp_path / "killed"
    run = killed_and_resumed(config, out, port=29563)
    assert run.returncode == 0, run.stderr[-3000:]
    assert losses(out) == losses(full)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["data"]["streaming"] is True and 300 // 32 <= summary["data"]["eval_rows"] <= 300 // 32 + 2


def test_stream_on_two_ranks_resumes_there_and_refuses_one(streamed_full, data, tmp_path):
    config, _ = streamed_full
    full = tmp_path / "full"
    run = openllm("none", "pretrain", "--config", config, "--output_dir", full, processes=2, port=29565)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "killed"
    crash = openllm("step:3", "pretrain", "--config", config, "--output_dir", out, processes=2, port=29566)
    assert crash.returncode != 0
    state = json.loads((out / "checkpoint-2" / "run_state.json").read_text())
    assert [p["rows"] for p in state["data_positions"]] == [8, 8]  # 2 steps × 4 rows, on each rank
    refused = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--per_device_train_batch_size", 8)
    assert refused.returncode == 2 and "world_size 2 → 1" in refused.stderr
    resumed = openllm("none", "pretrain", "--config", config, "--output_dir", out, processes=2, port=29567)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out) == losses(full)


def test_streaming_needs_a_tokenizer_and_max_steps(data, tmp_path):
    config = recipe(data, "stream-bad", dataset_name=str(data / "parquet"), text_column="text", streaming=True)
    run = openllm("none", "pretrain", "--config", config, "--output_dir", tmp_path / "x")
    assert run.returncode == 2 and "streaming: true needs a trained tokenizer" in run.stderr
    run = subprocess.run([sys.executable, "-m", "openllm", "pretrain", "--config", str(config), "--output_dir",
                          str(tmp_path / "y"), "--tokenizer_name_or_path", str(data / "tok"), "--max_steps", "-1",
                          "--num_train_epochs", "1"], capture_output=True, text=True, env=ENV)
    assert run.returncode == 2 and "streaming: true needs max_steps" in run.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
