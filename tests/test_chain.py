"""`openllm chain`, as a user runs it: every stage in its own process on the chain's YAMLs (shrunk here to a few
steps), killed in the middle, run again to finish, run a third time to change nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers.recipes import RECIPES

from openllm.chain import STAGES

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a few steps of each stage on a few examples; everything else is the chain's own YAML
SHRINK = {
    "pretrain": dict(max_documents=300, vocab_size=600, block_size=64, max_steps=4, eval_steps=2, save_steps=2,
                     per_device_train_batch_size=4, final_eval_documents=4,
                     model_config_overrides=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=1,
                                                 max_position_embeddings=128)),
    "sft": dict(max_train_samples=32, max_eval_samples=8, max_steps=2, save_steps=1, answer_max_new_tokens=8),
    "reward": dict(max_train_samples=32, max_eval_samples=8, max_steps=2),
    "dpo": dict(max_train_samples=32, max_eval_samples=8, max_steps=2, answer_max_new_tokens=8),
    "rlhf": dict(max_train_samples=16, max_eval_samples=8, max_steps=2, save_steps=1, max_completion_length=8,
                 answer_max_new_tokens=8, per_device_train_batch_size=8, num_generations=4),
}


def shrunk_recipes(tmp_path) -> Path:
    """The chain's YAMLs with outputs under tmp_path and a few steps per stage."""
    recipes = tmp_path / "recipes"
    (recipes / "chain").mkdir(parents=True)
    outputs = {}
    for stage in STAGES:
        config = yaml.safe_load((RECIPES / stage.config).read_text())
        config.update(SHRINK[stage.name], disable_tqdm=True)
        outputs[config["output_dir"]] = str(tmp_path / config["output_dir"])
        config["output_dir"] = outputs[config["output_dir"]]
        if config.get("model_name_or_path"):
            config["model_name_or_path"] = outputs[config["model_name_or_path"]]
        (recipes / stage.config).write_text(yaml.safe_dump(config))
    return recipes


def chain(recipes, report, *extra):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "openllm", "chain", "--recipes", str(recipes), "--report",
                             str(report), "--eval-questions", "4", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def greedy_answer(folder, question, max_new_tokens=64) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import openllm.models  # noqa: F401  (registers the model with the Auto classes)

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chain_killed_then_rerun_finishes_and_a_third_run_changes_nothing(tmp_path):
    recipes, report = shrunk_recipes(tmp_path), tmp_path / "chain_report.json"
    sft_dir = Path(yaml.safe_load((recipes / "chain" / "sft.yaml").read_text())["output_dir"])

    def sft_running_for_a_while() -> bool:  # a checkpoint written, and the report says SFT ran > 0 s
        running = json.loads(report.read_text()).get("running", {}) if report.is_file() else {}
        checkpointed = bool(list(sft_dir.glob("checkpoint-*")))
        return checkpointed and running.get("stage") == "sft" and running["wall_time_s"] > 0

    # kill the whole chain (the stage running and the driver) once SFT has written a checkpoint
    first = chain(recipes, report)
    deadline = time.monotonic() + 300
    while not sft_running_for_a_while() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.stdout.read()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    partial = json.loads(report.read_text())
    assert [row["stage"] for row in partial["stages"]] == ["pretrain"] and not partial["complete"]
    killed_after = partial["running"]["wall_time_s"]  # SFT's time in the killed chain, to the last heartbeat
    pretrain_summary = Path(partial["stages"][0]["output_model"]) / "training_summary.json"
    pretrained_at = pretrain_summary.stat().st_mtime_ns

    second = chain(recipes, report)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    assert "=== pretrain: finished" in out and "Resuming from" in out  # SFT picked up its checkpoint
    assert pretrain_summary.stat().st_mtime_ns == pretrained_at
    result = json.loads(report.read_text())
    assert result["complete"] and [row["stage"] for row in result["stages"]] == [s.name for s in STAGES]
    assert "running" not in result
    sft_row = result["stages"][1]  # its wall time counts the killed attempt too
    assert sft_row["interrupted_wall_time_s"] == killed_after and sft_row["wall_time_s"] > killed_after
    assert all(row["interrupted_wall_time_s"] == 0 for row in result["stages"] if row["stage"] != "sft")
    for row, stage in zip(result["stages"], STAGES):
        summary = json.loads((Path(row["output_model"]) / "training_summary.json").read_text())
        assert row["after"] == summary["metrics"][stage.key] and row["before"] is not None, row
        assert row["input_model"] == (summary["base_model"] or "untrained")
    assert result["stages"][0]["before"] > result["stages"][0]["after"]  # even 4 steps lower the perplexity
    assert set(result["evaluation"]["exact_match"]) == {"pretrain", "sft", "dpo", "rlhf"}
    served = result["served"]  # a real request to `openllm serve` on the final model: its greedy answer
    assert served["endpoint"] == "/v1/chat/completions"
    assert served["completion"] == greedy_answer(result["stages"][-1]["output_model"], served["question"])
    card = (Path(result["stages"][1]["output_model"]) / "README.md").read_text()
    assert "What this stage changed" in card and "`eval_answer_accuracy`" in card

    before = report.read_bytes()
    third = chain(recipes, report)
    out = third.communicate(timeout=300)[0]
    assert third.returncode == 0 and "Nothing was changed" in out, out
    assert report.read_bytes() == before


def test_a_finished_stage_whose_yaml_changed_is_named_with_both_values():
    from openllm.chain import changed_settings

    summary = {"base_model": "outputs/chain/dpo", "training_args": {"max_steps": 40, "learning_rate": 0.0001}}
    config = {"model_name_or_path": "outputs/chain/dpo", "max_steps": 50, "learning_rate": 1.0e-4, "temperature": 1.0}
    assert changed_settings(config, summary) == {"max_steps": (40, 50)}
    assert changed_settings({**config, "model_name_or_path": "elsewhere"}, summary)["model_name_or_path"] == (
        "outputs/chain/dpo", "elsewhere")


def test_a_decay_given_as_a_fraction_matches_the_steps_the_run_recorded():
    from openllm.chain import changed_settings

    config = yaml.safe_load((RECIPES / "pretrain_quickstart.yaml").read_text())
    assert config["lr_scheduler_kwargs"] == {"num_decay_steps": 0.2} and config["max_steps"] == 600
    recorded = {"lr_scheduler_type": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 120},
                "max_steps": 600, "warmup_steps": config["warmup_steps"], "learning_rate": config["learning_rate"]}
    assert changed_settings(config, {"training_args": recorded}) == {}
    longer = {**config, "lr_scheduler_kwargs": {"num_decay_steps": 0.3}}
    assert changed_settings(longer, {"training_args": recorded}) == {
        "lr_scheduler_kwargs": ({"num_decay_steps": 120}, {"num_decay_steps": 0.3})}
