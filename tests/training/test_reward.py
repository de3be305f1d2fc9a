"""Reward recipe: a sequence classifier initialised from a causal LM ranks held-out chosen above rejected."""

import json

import pytest
import torch
from helpers.recipes import run_recipe
from safetensors.torch import load_file


@pytest.mark.slow  # ~100 s on two idle cores: held-out parity is learned abruptly, after 100-250 steps
def test_reward_model_ranks_held_out_pairs_better_than_chance(tmp_path, tiny_base):
    out = tmp_path / "rm"
    summary, trainer = run_recipe("reward", "reward_debug", model_name_or_path=tiny_base, output_dir=out,
                                  dataset_name="openllm:parity", max_steps=400, learning_rate=3e-3,
                                  per_device_train_batch_size=32, max_train_samples=4000, max_eval_samples=100,
                                  logging_steps=25)
    m = summary["metrics"]
    assert summary["stage"] == "reward" and summary["data"]["eval_examples"] == 100
    # parity questions in the test split never appear in training (openllm.data.post_training splits by question)
    assert m["eval_accuracy"] >= 0.7 and m["eval_accuracy"] > m["initial_eval_accuracy"] + 0.15
    assert m["eval_margin"] > 0
    # the decoder started from the causal LM's weights; the score head is new
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["OpenLLMForSequenceClassification"] and len(config["id2label"]) == 1
    saved = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in saved and saved["score.weight"].shape == (1, 64)


def test_reward_model_starts_from_the_causal_lm_decoder(tiny_base):
    from trl import ModelConfig, RewardConfig

    from openllm.training.posttrain import load_model

    model = load_model(ModelConfig(model_name_or_path=str(tiny_base), dtype="float32"),
                       RewardConfig(output_dir="unused", bf16=False), sequence_classification=True)
    base = load_file(tiny_base / "model.safetensors")
    decoder = {f"model.{k}": v for k, v in model.model.state_dict().items()}
    assert set(base) - {"lm_head.weight"} <= set(decoder)
    for name in set(base) - {"lm_head.weight"}:
        assert torch.equal(decoder[name], base[name]), name
    assert type(model).__name__ == "OpenLLMForSequenceClassification" and model.score.out_features == 1


def test_the_new_score_head_starts_the_same_in_every_run_with_the_same_seed(tmp_path, tiny_base):
    heads = []
    for run in ("a", "b", "c"):
        seed = 1 if run == "c" else 0
        run_recipe("reward", "reward_debug", model_name_or_path=tiny_base, output_dir=tmp_path / run,
                   dataset_name="openllm:parity", max_steps=1, learning_rate=1e-9, max_train_samples=8,
                   max_eval_samples=8, answer_accuracy="false", seed=seed)
        heads.append(load_file(tmp_path / run / "model.safetensors")["score.weight"])
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
