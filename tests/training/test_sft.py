"""SFT recipe: loss on completions falls, masks cover only answers, LoRA + merge, MoE expert load, resume, packing,
push_to_hub offline, QLoRA on CPU."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers.recipes import RECIPES, load_recipe, run_recipe

ANSWER = re.compile(r"(\d+|even|odd|[a-f]{3,5})<\|eos\|>")
FAST = dict(max_train_samples=400, max_eval_samples=32, logging_steps=5)
CONTRACT = {"stage", "base_model", "datasets", "data", "training_args", "log_history", "metrics", "hardware",
            "train_runtime_s"}


def _trained_text(trainer, row):
    """The tokens of a processed example that carry loss (label != -100)."""
    return trainer.processing_class.decode([t for t in row["labels"] if t != -100])


def test_sft_full_completion_loss_falls_and_push_offline_keeps_folder(tmp_path, tiny_base, caplog):
    out = tmp_path / "sft"
    with caplog.at_level(logging.WARNING, logger="openllm.training.posttrain"):
        summary, trainer = run_recipe("sft", "sft_debug", model_name_or_path=tiny_base, output_dir=out, max_steps=24,
                                      push_to_hub="true", hub_model_id="someone/tiny-sft", **FAST)
    metrics = summary["metrics"]
    assert CONTRACT <= set(summary) and summary["stage"] == "sft" and summary["base_model"] == str(tiny_base)
    assert summary["datasets"] == ["openllm:mix"] and summary["data"]["train_examples"] == 400
    # loss is measured on the answers only; 24 steps take it from uniform-ish (~ln 384 = 5.95) far down
    assert metrics["initial_eval_loss"] > 5.0 and metrics["eval_loss"] < metrics["initial_eval_loss"] - 2.0
    assert metrics["perplexity"] < metrics["initial_perplexity"] / 5
    assert summary["training_args"]["assistant_only_loss"] is True
    # the loss mask covers exactly each answer and its end-of-turn token
    for row in trainer.train_dataset.select(range(6)):
        assert ANSWER.fullmatch(_trained_text(trainer, row)), _trained_text(trainer, row)
    # offline: nothing pushed, a clear message, and a complete folder ready to push
    assert "HF_HUB_OFFLINE is set" in caplog.text and "hf upload someone/tiny-sft" in caplog.text
    assert {"model.safetensors", "config.json", "tokenizer.json", "training_summary.json"} <= {
        p.name for p in out.iterdir()}


def test_sft_prompt_completion_masks_the_completion_and_packing_packs(tmp_path, tiny_base):
    summary, trainer = run_recipe("sft", "sft_debug", model_name_or_path=tiny_base, output_dir=tmp_path / "pc",
                                  dataset_config="standard", max_steps=1, max_train_samples=16,
                                  eval_before_and_after="false", answer_accuracy="false")
    row = trainer.train_dataset[0]
    assert summary["training_args"]["assistant_only_loss"] is False
    assert ANSWER.fullmatch(_trained_text(trainer, row).strip()), _trained_text(trainer, row)

    summary, trainer = run_recipe("sft", "sft_debug", model_name_or_path=tiny_base, output_dir=tmp_path / "pack",
                                  packing="true", max_length=64, max_steps=2, max_train_samples=64,
                                  eval_before_and_after="false", answer_accuracy="false")
    assert len(trainer.train_dataset) < 64 / 2  # ~20-token conversations, several per 64-token block
    assert all(len(ids) <= 64 for ids in trainer.train_dataset["input_ids"])
    assert summary["metrics"]["train_loss"] > 0


def test_sft_lora_then_merge_equals_base_plus_adapter(tmp_path, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openllm_cli import main as cli

    adapter, merged = tmp_path / "lora", tmp_path / "merged"
    summary, _ = run_recipe("sft", "sft_lora_debug", model_name_or_path=tiny_base, output_dir=adapter, max_steps=25,
                            **FAST)
    assert summary["adapter"] is True and summary["training_args"]["use_peft"] is True
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert summary["metrics"]["eval_loss"] < summary["metrics"]["initial_eval_loss"] - 0.5

    assert cli(["merge", "--adapter", str(adapter), "--output-dir", str(merged)]) == 0
    merge_summary = json.loads((merged / "training_summary.json").read_text())
    assert merge_summary["stage"] == "merge" and merge_summary["base_model"] == str(tiny_base)
    assert merge_summary["metrics"]["max_abs_logit_diff"] < 1e-4
    # tokenizer files that transformers 4.57 loads too
    assert json.loads((merged / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"

    ids = torch.randint(0, 384, (3, 20), generator=torch.Generator().manual_seed(1))
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        expected = PeftModel.from_pretrained(base, adapter).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base_logits).abs().max() > 1e-2  # the adapter changed something

    # standalone: loads with trust_remote_code in a process that cannot import openllm
    code = ("import torch, sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({str(merged)!r}, trust_remote_code=True); "
            f"t = AutoTokenizer.from_pretrained({str(merged)!r}, trust_remote_code=True); "
            "assert 'openllm' not in sys.modules; print(type(m).__name__, len(t))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "OpenLLMForCausalLM 384"


def test_moe_sft_logs_expert_utilisation(tmp_path, tiny_moe_base):
    summary, _ = run_recipe("sft", "sft_moe_debug", model_name_or_path=tiny_moe_base, output_dir=tmp_path / "moe",
                            max_steps=10, **FAST)
    logged = [e for e in summary["log_history"] if "expert_load/max" in e]
    assert len(logged) >= 2
    for entry in logged:
        assert entry["expert_load/max"] >= 1.0 >= entry["expert_load/min"] >= 0.0 and entry["expert_load/cv"] >= 0.0
        assert entry["expert_load/max"] == max(entry["expert_load/layer_0"], entry["expert_load/layer_1"])
    load = summary["metrics"]["expert_load"]
    assert set(load) == {"0", "1"} and all(len(f) == 4 and abs(sum(f) - 1) < 1e-3 for f in load.values())
    assert summary["metrics"]["eval_loss"] < summary["metrics"]["initial_eval_loss"]


def test_resume_from_checkpoint_continues_the_run(tmp_path, tiny_base, tokenizer):
    from openllm.training.posttrain import init_base

    out = tmp_path / "resume"
    common = dict(output_dir=out, save_strategy="steps", save_steps=2, logging_steps=2, max_train_samples=64,
                  eval_before_and_after="false", answer_accuracy="false")
    first, _ = run_recipe("sft", "sft_debug", model_name_or_path=tiny_base, max_steps=4, **common)
    assert (out / "checkpoint-4").is_dir()
    # resume with a *different* starting model: a resumed run loads checkpoint-4 and keeps its history
    other_base = tmp_path / "other-base"
    init_base(other_base, "tiny", tokenizer=tokenizer, seed=123)
    second, trainer = run_recipe("sft", "sft_debug", model_name_or_path=other_base, max_steps=6,
                                 resume_from_checkpoint="last", **common)
    assert trainer.state.global_step == 6
    losses = lambda s: {e["step"]: e["loss"] for e in s["log_history"] if "loss" in e}  # noqa: E731
    assert losses(second)[2] == losses(first)[2] and losses(second)[4] == losses(first)[4]
    assert set(losses(second)) == {2, 4, 6}


def test_qlora_on_cpu_fails_before_loading(tmp_path, tiny_base):
    recipe = load_recipe("sft")
    args = recipe.make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "sft_debug.yaml"), "--model_name_or_path", str(tiny_base), "--output_dir",
         str(tmp_path / "q"), "--use_peft", "true", "--load_in_4bit", "true"])
    with pytest.raises(ValueError, match="needs a CUDA GPU.*Use plain LoRA"):
        recipe.main(*args)


def test_conversational_data_without_chat_template_fails(tmp_path, tiny_base, tokenizer):
    plain = tmp_path / "no-template"
    tokenizer.save_pretrained(plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    recipe = load_recipe("sft")
    args = recipe.make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "sft_debug.yaml"), "--model_name_or_path", str(tiny_base), "--output_dir",
         str(tmp_path / "x"), "--tokenizer_name_or_path", str(plain)])
    with pytest.raises(ValueError, match="no chat template"):
        recipe.main(*args)
