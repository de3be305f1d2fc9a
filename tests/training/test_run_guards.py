"""What a run refuses to do: delete what it did not write, and resume onto other data, or another data order, than
it trained on. And what it continues exactly: a 2-rank run killed and resumed on 2 ranks."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.launch import openllm
from helpers.recipes import RECIPES

from openllm.training.arguments import TRANSFORMERS_4

MICRO = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    from helpers.text import sentences

    root = tmp_path_factory.mktemp("guards")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences(300)))
    settings = {"dataset_name": str(root / "corpus.jsonl"), "text_column": "text", "block_size": 32,
                "eval_fraction": 0.05, "vocab_size": 300, "model_preset": "tiny", "model_config_overrides": MICRO,
                "max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 1,
                "logging_steps": 1, "eval_strategy": "no", "save_steps": 2, "final_eval_documents": 0,
                "disable_tqdm": True, "precision": "fp32", "dataloader_num_workers": 0}
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def losses(folder: Path) -> dict[int, float]:
    history = json.loads((folder / "training_summary.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


# ---------------------------------------------------------------------------------------------------------------------
# Overwriting


def test_overwrite_refuses_a_folder_with_files_no_run_wrote(config, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    run = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--overwrite_output_dir", "true")
    assert run.returncode == 2
    assert (f"overwrite_output_dir removes only a folder written by an OpenLLM run, and {out} also holds notes.txt"
            in run.stderr)
    assert (out / "notes.txt").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_removes_a_finished_run_and_retrains(config, tmp_path):
    out = tmp_path / "run"
    assert openllm("none", "pretrain", "--config", config, "--output_dir", out, "--max_steps", 2).returncode == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert {"config.json", "model.safetensors", "README.md", "training_summary.json"} <= set(summary["files"])
    again = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--max_steps", 3,
                    "--overwrite_output_dir", "true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert max(losses(out)) == 3
    (out / "notes.txt").write_text("added later")  # a finished run's folder with a user's file in it: refused too
    third = openllm("none", "pretrain", "--config", config, "--output_dir", out, "--overwrite_output_dir", "true")
    assert third.returncode == 2 and "also holds notes.txt" in third.stderr and max(losses(out)) == 3


def test_overwrite_refuses_to_delete_the_input_model(tiny_base, tmp_path):
    model = tmp_path / "base"
    shutil.copytree(tiny_base, model)
    before = sorted(p.name for p in model.iterdir())
    run = openllm("none", "sft", "--config", RECIPES / "sft_debug.yaml", "--model_name_or_path", model,
                  "--output_dir", model, "--overwrite_output_dir", "true", "--max_steps", 1)
    assert run.returncode == 2
    assert f"overwrite_output_dir would delete {model}, which this run reads" in run.stderr
    assert sorted(p.name for p in model.iterdir()) == before


# ---------------------------------------------------------------------------------------------------------------------
# Resuming


@pytest.fixture(scope="module")
def two_ranks(config):
    """An uninterrupted 2-rank run, and the same run killed after step 3 (checkpoint-2 saved)."""
    full, killed = config.parent / "full", config.parent / "killed"
    run = openllm("none", "pretrain", "--config", config, "--output_dir", full, processes=2)
    assert run.returncode == 0, run.stderr[-3000:]
    crash = openllm("step:3", "pretrain", "--config", config, "--output_dir", killed, processes=2, port=29542)
    assert crash.returncode != 0 and not (killed / "training_summary.json").exists()
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]
    state = json.loads((killed / "checkpoint-2" / "run_state.json").read_text())["data"]
    assert state["world_size"] == 2 and state["global_batch_size"] == 8 and state["length"] == 32
    return full, killed


def test_resume_with_another_batch_shape_or_length_is_refused(two_ranks, config):
    _, killed = two_ranks
    one_rank = openllm("none", "pretrain", "--config", config, "--output_dir", killed)  # 1 rank × 4
    assert one_rank.returncode == 2
    assert (f"Cannot resume {killed / 'checkpoint-2'} exactly: global_batch_size 8 → 4; world_size 2 → 1"
            in one_rank.stderr)
    assert "--ignore_data_skip true" in one_rank.stderr and "new --output_dir" in one_rank.stderr
    same = ("the same number of processes, per_device_train_batch_size" if TRANSFORMERS_4 else
            "the same global batch, per_device_train_batch_size × gradient_accumulation_steps × processes")
    assert same in one_rank.stderr
    block = openllm("none", "pretrain", "--config", config, "--output_dir", killed, "--block_size", 16, processes=2,
                    port=29543)
    assert block.returncode != 0 and "exactly: length 32 → 16" in block.stderr  # torchrun: 1 for any failure
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2"]  # nothing was touched


def test_resume_on_one_process_with_the_same_global_batch_continues_exactly(two_ranks, config, tmp_path):
    """Pretraining's sample order depends on the seed and the global batch only: 2 ranks × 4, killed, continue on
    1 process × 8 as the uninterrupted 2-rank run (transformers 5; 4.57 refuses)."""
    full, killed = two_ranks
    resumed = tmp_path / "resumed"
    shutil.copytree(killed, resumed)
    run = openllm("none", "pretrain", "--config", config, "--output_dir", resumed, "--per_device_train_batch_size", 8)
    if TRANSFORMERS_4:  # 4.57 resumed in another order: refused there
        assert run.returncode == 2 and "exactly: world_size 2 → 1 (checkpoint → this run)" in run.stderr
        return
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Resuming from {resumed / 'checkpoint-2'}" in run.stderr
    assert list(losses(resumed).values()) == pytest.approx(list(losses(full).values()), rel=1e-5)


def test_resume_on_the_same_ranks_continues_exactly(two_ranks, config):
    full, killed = two_ranks
    run = openllm("none", "pretrain", "--config", config, "--output_dir", killed, processes=2, port=29544)
    assert run.returncode == 0, run.stderr[-3000:]
    assert losses(killed) == losses(full)  # every rank's loss accumulators carried over, the same data in order


def test_two_ranks_train_as_one_process_with_the_same_global_batch(two_ranks, config, tmp_path):
    """The held-out loss measured before training must not leave the ranks training without gradient
    synchronisation: 2 ranks × 4 follow 1 process × 8 step for step."""
    full, _ = two_ranks
    one = tmp_path / "one"
    run = openllm("none", "pretrain", "--config", config, "--output_dir", one, "--per_device_train_batch_size", 8)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(losses(full).values()) == pytest.approx(list(losses(one).values()), rel=1e-5)
