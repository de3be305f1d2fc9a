"""RLHF recipe (GRPO): mean reward rises on a checkable reward; rewards come from a registry or a reward model."""

import pytest
from helpers.recipes import RECIPES, load_recipe, run_recipe


def test_grpo_raises_mean_reward(tmp_path, tiny_base):
    # `digits` rewards the share of digits in a completion: checkable, and climbable from an untrained model
    summary, _ = run_recipe("rlhf", "rlhf_debug", model_name_or_path=tiny_base, output_dir=tmp_path / "grpo",
                            reward_model_name_or_path="", reward_funcs=["digits"], max_steps=12, learning_rate=1e-2,
                            per_device_train_batch_size=16, logging_steps=1, answer_accuracy="false")
    rewards = [e["reward"] for e in summary["log_history"] if "reward" in e]
    assert len(rewards) == 12 and summary["stage"] == "rlhf"
    assert summary["reward"] == {"model": None, "functions": ["digits"]}
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > 3 * first and last > 0.08
    assert summary["metrics"]["initial_reward"] == pytest.approx(rewards[0], abs=1e-6)
    assert summary["metrics"]["final_reward"] == pytest.approx(rewards[-1], abs=1e-6)


def test_unknown_reward_name_lists_the_valid_ones(tmp_path, tiny_base):
    recipe = load_recipe("rlhf")
    args = recipe.make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "rlhf_debug.yaml"), "--model_name_or_path", str(tiny_base), "--output_dir",
         str(tmp_path / "x"), "--reward_funcs", "accuracy", "exact_match"])
    with pytest.raises(ValueError, match=r"Unknown reward function\(s\) \['exact_match'\]. Valid names: accuracy, "):
        recipe.main(*args)


def test_reward_model_adapter_is_refused_with_the_fix(tmp_path, tiny_base):
    adapter = tmp_path / "rm-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    recipe = load_recipe("rlhf")
    args = recipe.make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "rlhf_debug.yaml"), "--model_name_or_path", str(tiny_base), "--output_dir",
         str(tmp_path / "x"), "--reward_model_name_or_path", str(adapter)])
    with pytest.raises(ValueError, match="is a LoRA adapter.*openllm merge --adapter"):
        recipe.main(*args)
