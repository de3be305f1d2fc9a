"""Runs survive anything: SIGKILL at random instants (inside a checkpoint save and inside the final commit
included), rerun until done, gives the uninterrupted run's weights, loss curve and learning-rate schedule; rerunning
a finished run changes no byte and says it is complete."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.recipes import RECIPES
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "helpers" / "faults.py"
MICRO = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64}


def openllm(fault: str, *argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(FAULTS), fault, *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300)


def run_until_done(faults, *argv, after_first_kill=None) -> list[subprocess.CompletedProcess]:
    """Run with each fault in turn (each must kill the run), then once more to the end; what each run printed."""
    runs = []
    for fault in faults:
        runs.append(openllm(fault, *argv))
        assert runs[-1].returncode == -signal.SIGKILL, (fault, runs[-1].returncode, runs[-1].stderr[-3000:])
        if after_first_kill is not None and len(runs) == 1:
            after_first_kill()
    runs.append(openllm("none", *argv))
    assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
    return runs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def curve(folder: Path) -> list[tuple]:
    """(step, loss, learning rate, tokens seen) of every training log, and (step, eval loss) of every evaluation."""
    history = json.loads((folder / "training_summary.json").read_text())["log_history"]
    return [(e["step"], e["loss"], e["learning_rate"], e.get("num_input_tokens_seen")) for e in history if "loss" in e
            ] + [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]


def assert_same_run(got: Path, expected: Path):
    a, b = load_file(got / "model.safetensors"), load_file(expected / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise (CPU, fp32)
    assert curve(got) == curve(expected)
    s, t = (json.loads((f / "training_summary.json").read_text()) for f in (got, expected))
    assert s["metrics"] == t["metrics"]
    assert not [p.name for p in got.iterdir() if p.name.startswith(".")]  # no staging folder left behind


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining


@pytest.fixture(scope="module")
def pretrain_config(tmp_path_factory):
    from helpers.text import sentences

    root = tmp_path_factory.mktemp("reliability")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences(200)))
    config = {"dataset_name": str(root / "corpus.jsonl"), "text_column": "text", "block_size": 32,
              "eval_fraction": 0.05, "vocab_size": 300, "model_preset": "tiny",
              "model_config_overrides": MICRO, "max_steps": 8, "per_device_train_batch_size": 4,
              "learning_rate": 1e-2, "warmup_steps": 2, "logging_steps": 1, "eval_steps": 4, "save_steps": 2,
              "save_total_limit": 2, "final_eval_documents": 4, "disable_tqdm": True, "precision": "fp32"}
    # no tokenizer named: the run trains one, and a resumed run must encode with that same one
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def pretrained(pretrain_config):
    out = pretrain_config.parent / "uninterrupted"
    assert openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", out).returncode == 0
    return out


def test_pretraining_killed_anywhere_ends_as_the_uninterrupted_run(pretrain_config, pretrained):
    rng = random.Random(8)
    # a random optimizer step, a random checkpoint save, the finished folder staged, and half moved into place
    faults = [f"step:{rng.choice([1, 3, 5])}", f"save:{rng.choice([4, 6])}", "staged", "commit"]
    out = pretrain_config.parent / "killed"

    def plant_incomplete_checkpoint():  # as left by a writer that died before its trainer_state.json
        (out / "checkpoint-7").mkdir()
        (out / "checkpoint-7" / "model.safetensors").write_bytes(b"partial")

    runs = run_until_done(faults, "pretrain", "--config", pretrain_config, "--output_dir", out,
                          after_first_kill=plant_incomplete_checkpoint)
    assert_same_run(out, pretrained)
    assert f"Ignoring {out / 'checkpoint-7'}: it is incomplete" in runs[1].stderr
    assert f"Resuming from {out / 'checkpoint-8'}" in runs[3].stderr  # the schedule's end: nothing left to train
    assert "nothing left to train" in runs[3].stderr
    assert f"Run complete: {out}" in runs[4].stdout  # the last run only finished moving the folder into place
    assert not any("There were missing keys" in r.stderr for r in runs)  # the tied head is not missing
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-7", "checkpoint-8"]


def test_rerunning_a_finished_pretraining_changes_nothing(pretrain_config, pretrained):
    before = snapshot(pretrained)
    again = openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", pretrained)
    assert again.returncode == 0 and f"Run complete: {pretrained}" in again.stdout
    assert "eval_loss" in again.stdout and "--overwrite_output_dir true" in again.stdout
    assert snapshot(pretrained) == before
    # --overwrite_output_dir trains again, from scratch, to the same result
    fresh = openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", pretrained,
                    "--overwrite_output_dir", "true")
    assert fresh.returncode == 0 and "Run complete" not in fresh.stdout
    assert snapshot(pretrained)["model.safetensors"] == before["model.safetensors"]


def test_a_second_run_into_a_busy_output_dir_is_refused_until_the_first_dies(pretrain_config, tmp_path):
    out = tmp_path / "busy"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from openllm.training.run import lock_output_dir\n"
                               "lock_output_dir(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(out)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", out)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"Another run (process {holder.pid}) is training into {out.resolve()}" in refused.stderr
        assert not out.exists()  # refused before writing anything
    finally:
        holder.kill()  # SIGKILL: the lock goes with its holder, nothing stale is left
        holder.wait()
    again = openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "training_summary.json").is_file()
    # a process whose run is over (a notebook's kernel, say) lets the folder go
    from openllm.training.run import lock_output_dir, unlock_output_dir

    lock_output_dir(out)
    unlock_output_dir(out)
    rerun = openllm("none", "pretrain", "--config", pretrain_config, "--output_dir", out)
    assert rerun.returncode == 0 and f"Run complete: {out}" in rerun.stdout, rerun.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------------
# Post-training


def sft_args(tiny_base, out):
    return ["sft", "--config", RECIPES / "sft_debug.yaml", "--model_name_or_path", tiny_base, "--output_dir", out,
            "--max_steps", 6, "--save_strategy", "steps", "--save_steps", 2, "--logging_steps", 1,
            "--max_train_samples", 48, "--max_eval_samples", 8, "--per_device_train_batch_size", 8,
            "--answer_accuracy", "false", "--disable_tqdm", "true"]


def test_sft_killed_anywhere_ends_as_the_uninterrupted_run(tmp_path, tiny_base):
    expected = tmp_path / "uninterrupted"
    assert openllm("none", *sft_args(tiny_base, expected)).returncode == 0
    rng = random.Random(6)
    faults = [f"step:{rng.choice([1, 3])}", f"save:{rng.choice([4, 6])}", "commit"]
    out = tmp_path / "killed"
    run_until_done(faults, *sft_args(tiny_base, out))
    assert_same_run(out, expected)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["metrics"]["initial_eval_loss"] > summary["metrics"]["eval_loss"]  # measured once, before

    before = snapshot(out)
    again = openllm("none", *sft_args(tiny_base, out))
    assert again.returncode == 0 and f"Run complete: {out}" in again.stdout
    assert snapshot(out) == before


@pytest.mark.parametrize("stage", ["reward", "dpo", "rlhf"])
def test_rerunning_a_finished_post_training_run_changes_nothing(stage, tmp_path, tiny_base, capsys):
    from helpers.recipes import run_recipe

    out = tmp_path / stage
    extra = {"reward_model_name_or_path": "", "reward_funcs": ["digits"]} if stage == "rlhf" else {}
    kwargs = dict(model_name_or_path=tiny_base, output_dir=out, max_steps=2, max_train_samples=32,
                  max_eval_samples=8, answer_accuracy="false", save_strategy="steps", save_steps=2, **extra)
    summary, trainer = run_recipe(stage, f"{stage}_debug", **kwargs)
    assert trainer is not None and summary["stage"] == stage
    before = snapshot(out)
    capsys.readouterr()
    again, trainer = run_recipe(stage, f"{stage}_debug", **kwargs)
    assert trainer is None and again == summary
    assert f"Run complete: {out} already holds the finished {stage} run" in capsys.readouterr().out
    assert snapshot(out) == before
