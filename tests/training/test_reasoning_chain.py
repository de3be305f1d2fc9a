"""The reasoning chain (recipes/chain/*.yaml): each config reads the previous stage's output, and (slow, about 15
minutes on two CPU cores) `openllm chain` from scratch improves every stage's own target on held-out questions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.recipes import RECIPES, load_recipe

RL_TASK = "word-problems"


def _parse(stage):
    config = RECIPES / "chain" / f"{stage}.yaml"
    return load_recipe(stage).make_parser().parse_args_and_config(["--config", str(config)])


def test_chain_configs_parse_and_read_the_previous_stage():
    pretrain_output = load_recipe("pretrain").make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "pretrain_quickstart.yaml")])[2].output_dir
    (sft_script, sft, sft_model), (_, reward, reward_model), (_, dpo, dpo_model), (rl_script, rl, rl_model) = (
        _parse(stage) for stage in ("sft", "reward", "dpo", "rlhf"))
    assert sft_model.model_name_or_path == pretrain_output
    assert reward_model.model_name_or_path == dpo_model.model_name_or_path == sft.output_dir
    assert rl_model.model_name_or_path == dpo.output_dir
    assert rl_script.reward_funcs and len(rl.reward_weights) == len(rl_script.reward_funcs)
    assert sft_script.dataset_name == "openllm:reasoning" and rl_script.dataset_name == f"openllm:{RL_TASK}"
    # one data source for SFT and the preference stages; the RL reward cannot be earned by guessing
    assert sft_script.terse_fraction == _parse("reward")[0].terse_fraction == _parse("dpo")[0].terse_fraction > 0
    assert rl_script.reward_funcs == ["verified_accuracy"]
    for stage in ("sft", "reward", "dpo", "rlhf"):
        header = (RECIPES / "chain" / f"{stage}.yaml").read_text().split("\n\n")[0].splitlines()
        assert any(f"recipes/{stage}.py --config recipes/chain/{stage}.yaml" in line for line in header)
        assert any("CPU" in line for line in header)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole chain takes about 15 minutes on 2 cores, past the suite's 900 s limit
def test_make_chain_improves_every_stage_on_held_out_data(tmp_path):
    """`openllm chain` from scratch (about 15 minutes on 2 cores): each stage beats the model it started from."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    subprocess.run([sys.executable, "-m", "openllm", "chain", "--recipes", str(RECIPES)], cwd=tmp_path, env=env,
                   check=True)
    report = json.loads((tmp_path / "outputs" / "chain" / "chain_report.json").read_text())
    rows = {row["stage"]: row for row in report["stages"]}
    assert rows["pretrain"]["after"] < rows["pretrain"]["before"] / 10  # perplexity
    assert rows["sft"]["before"] <= 0.02 and rows["sft"]["after"] >= 0.3, rows["sft"]
    assert rows["reward"]["after"] >= rows["reward"]["before"] + 0.1, rows["reward"]
    assert rows["dpo"]["after"] >= rows["dpo"]["before"] + 0.1, rows["dpo"]
    assert rows["dpo"]["exact_match"]["after"] >= rows["dpo"]["exact_match"]["before"] - 0.02, rows["dpo"]
    assert rows["rlhf"]["after"] >= rows["rlhf"]["before"] + 0.10, rows["rlhf"]  # word problems, 200 questions
    assert report["complete"] and report["served"]["completion"].strip()
