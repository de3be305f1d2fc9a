import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.callbacks import CrashAt
from helpers.text import sentences
from transformers import AutoModelForCausalLM, AutoTokenizer

from openllm.data.tokenizer import train_tokenizer
from openllm.training.arguments import DataArguments, ModelArguments, PretrainConfig, cpu_supports_bf16
from openllm.training.pretrain import make_parser, pretrain

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("pretrain_*.yaml"))
MICRO = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64}
STEPS, BATCH, BLOCK = 12, 4, 32


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences(400)))
    train_tokenizer(sentences(400), vocab_size=300, output_dir=str(root / "tok"), show_progress=False)
    return root


def arguments(workdir, out, preset="tiny", **training):
    data = DataArguments(dataset_name=str(workdir / "corpus.jsonl"), text_column="text", block_size=BLOCK,
                         eval_fraction=0.05, tokenizer_name_or_path=str(workdir / "tok"))
    model = ModelArguments(model_preset=preset, model_config_overrides=dict(MICRO))
    args = dict(output_dir=str(workdir / out), max_steps=STEPS, per_device_train_batch_size=BATCH,
                per_device_eval_batch_size=8, learning_rate=1e-2, warmup_steps=2, logging_steps=1, eval_steps=6,
                save_steps=6, eval_on_start=True, disable_tqdm=True, dataloader_num_workers=0)
    return data, model, PretrainConfig(**{**args, **training})


def train_losses(summary) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in summary["log_history"] if "loss" in h}


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    return pretrain(*arguments(workdir, "full"))


def test_eval_loss_falls_and_summary_follows_the_contract(uninterrupted, workdir):
    s = json.loads((workdir / "full" / "training_summary.json").read_text())
    assert s == json.loads(json.dumps(uninterrupted, default=str))
    assert {"stage", "base_model", "datasets", "data", "training_args", "log_history", "metrics", "hardware",
            "train_runtime_s"} <= set(s)
    assert s["stage"] == "pretrain" and s["datasets"] == [str(workdir / "corpus.jsonl")]
    evals = [h["eval_loss"] for h in s["log_history"] if "eval_loss" in h]
    assert evals[0] > math.log(300) - 0.5  # untrained: about uniform over the vocabulary
    assert evals == sorted(evals, reverse=True) and s["metrics"]["eval_loss"] < evals[0] - 0.8
    m, d = s["metrics"], s["data"]
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert m["bits_per_byte"] == pytest.approx(m["eval_loss"] / math.log(2) * d["eval_tokens"] / d["eval_bytes"])
    assert m["tokens_seen"] == STEPS * BATCH * BLOCK
    assert d["documents_in"] == 400 and d["train_documents"] + d["eval_documents"] == d["documents"]
    assert d["train_blocks"] * BLOCK + d["eval_blocks"] * BLOCK + d["tokens_dropped"] == d["train_tokens"] + d[
        "eval_tokens"]
    logged = s["log_history"][5]
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_second", "num_input_tokens_seen"} <= set(logged)
    assert s["training_args"]["precision"] == ("bf16" if cpu_supports_bf16() else "fp32")
    assert s["training_args"]["world_size"] == 1 and s["hardware"].startswith("1 × ")

    model = AutoModelForCausalLM.from_pretrained(workdir / "full", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "full")
    assert (workdir / "full" / "modeling_openllm.py").exists() and model.config.use_cache
    assert model.config.vocab_size == len(tokenizer) == 300 and model.config.eos_token_id == tokenizer.eos_token_id


def test_resume_after_crash_is_exact(uninterrupted, workdir):
    with pytest.raises(RuntimeError, match="simulated crash at step 9"):
        pretrain(*arguments(workdir, "crash"), callbacks=[CrashAt(9)])
    assert sorted(p.name for p in (workdir / "crash").glob("checkpoint-*")) == ["checkpoint-6"]
    resumed = pretrain(*arguments(workdir, "crash"))  # the same command again
    expected, got = train_losses(uninterrupted), train_losses(resumed)
    assert [got[step] for step in range(7, STEPS + 1)] == [expected[step] for step in range(7, STEPS + 1)]
    assert resumed["metrics"]["eval_loss"] == uninterrupted["metrics"]["eval_loss"]


def test_moe_logs_expert_load_and_offline_push_leaves_folder(workdir, caplog):
    data, model, args = arguments(workdir, "moe", preset="tiny-moe", max_steps=4, eval_steps=4, save_steps=4,
                                  eval_on_start=False, push_to_hub=True, hub_model_id="someone/openllm-test")
    with caplog.at_level(logging.WARNING, logger="openllm"):
        summary = pretrain(data, model, args)
    logged = summary["log_history"][0]
    assert set(k for k in logged if k.startswith("expert_load/")) == {"expert_load/layer_0", "expert_load/layer_1",
                                                                      "expert_load/max", "expert_load/min",
                                                                      "expert_load/cv"}
    assert all(1.0 <= logged[f"expert_load/layer_{i}"] <= 4.0 for i in range(2))  # 4 experts
    for fractions in summary["metrics"]["expert_load"].values():
        assert len(fractions) == 4 and sum(fractions) == pytest.approx(1.0, abs=1e-3)
    assert "Could not push to the Hub" in caplog.text
    assert f"hf upload someone/openllm-test {workdir / 'moe'}" in caplog.text
    assert (workdir / "moe" / "model.safetensors").exists() and (workdir / "moe" / "training_summary.json").exists()


def test_block_size_beyond_context_fails_before_loading_data(workdir):
    data, model, args = arguments(workdir, "unused")
    data.block_size, data.dataset_name = 128, str(workdir / "missing.jsonl")
    with pytest.raises(ValueError, match=r"block_size=128 is larger than the model's context of 64 positions"):
        pretrain(data, model, args)


def test_ddp_two_processes(workdir):
    config = {"dataset_name": str(workdir / "corpus.jsonl"), "text_column": "text", "block_size": BLOCK,
              "eval_fraction": 0.05, "tokenizer_name_or_path": str(workdir / "tok"), "model_preset": "tiny",
              "model_config_overrides": MICRO, "output_dir": str(workdir / "ddp"), "max_steps": 4,
              "per_device_train_batch_size": BATCH, "logging_steps": 2, "eval_steps": 4, "save_steps": 4,
              "disable_tqdm": True}
    (workdir / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    # `accelerate launch -m openllm pretrain` runs what `accelerate launch recipes/pretrain.py` runs
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "openllm", "pretrain", "--config", str(workdir / "ddp.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((workdir / "ddp" / "training_summary.json").read_text())
    assert summary["training_args"]["world_size"] == 2 and summary["hardware"].startswith("2 × ")
    assert summary["training_args"]["global_batch_size"] == 2 * BATCH
    assert summary["metrics"]["tokens_seen"] == 4 * 2 * BATCH * BLOCK  # counted over both ranks


def test_openllm_pretrain_and_the_recipe_script_train_the_same_model(workdir):
    from helpers.recipes import load_recipe
    from safetensors.torch import load_file

    from openllm_cli import main as openllm

    config = {"dataset_name": str(workdir / "corpus.jsonl"), "text_column": "text", "block_size": BLOCK,
              "eval_fraction": 0.05, "tokenizer_name_or_path": str(workdir / "tok"), "model_preset": "tiny",
              "model_config_overrides": MICRO, "max_steps": 3, "per_device_train_batch_size": BATCH,
              "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "final_eval_documents": 0, "disable_tqdm": True}
    (workdir / "same.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", str(workdir / "same.yaml"), "--learning_rate", "0.02"]
    assert openllm(["pretrain", *argv, "--output_dir", str(workdir / "by-command")]) == 0
    recipe = load_recipe("pretrain")
    recipe.main(*recipe.make_parser().parse_args_and_config(argv + ["--output_dir", str(workdir / "by-script")]))
    a, b = (load_file(workdir / name / "model.safetensors") for name in ("by-command", "by-script"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((workdir / name / "training_summary.json").read_text()) for name in ("by-command",
                                                                                                  "by-script")]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    assert summaries[0]["training_args"]["learning_rate"] == 0.02


def test_fsdp_on_cpu_processes_is_refused_not_silently_ddp(workdir):
    """accelerate 1.15 applies an FSDP config only on accelerators; on 2 CPU ranks it would quietly run DDP."""
    config = {"dataset_name": str(workdir / "corpus.jsonl"), "text_column": "text", "block_size": BLOCK,
              "tokenizer_name_or_path": str(workdir / "tok"), "model_preset": "tiny", "model_config_overrides": MICRO,
              "output_dir": str(workdir / "fsdp"), "max_steps": 2, "disable_tqdm": True}
    (workdir / "fsdp.yaml").write_text(yaml.safe_dump(config))
    launcher = yaml.safe_load((ROOT / "recipes" / "accelerate_configs" / "fsdp.yaml").read_text())
    (workdir / "fsdp_2cpu.yaml").write_text(yaml.safe_dump({**launcher, "num_processes": 2}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(workdir / "fsdp_2cpu.yaml"),
           "--main_process_port", "29534", "-m", "openllm", "pretrain", "--config", str(workdir / "fsdp.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "The launcher asked for FSDP, but accelerate" in out.stderr and "set this run up as MULTI_CPU" in out.stderr
    assert not (workdir / "fsdp" / "training_summary.json").exists()


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero3"])
def test_accelerate_configs_load(name):
    """The GPU launch configs parse with accelerate's own loader and ask for what their names say."""
    from accelerate.commands.config.config_args import load_config_from_file

    from openllm import OpenLLMForCausalLM

    config = load_config_from_file(str(ROOT / "recipes" / "accelerate_configs" / f"{name}.yaml"))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}[name]
    assert str(config.distributed_type).split(".")[-1] == expected and config.num_processes == 8
    assert config.mixed_precision == "no" and not config.use_cpu  # precision comes from the recipe
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert OpenLLMForCausalLM._no_split_modules == ["OpenLLMDecoderLayer"]  # the unit FSDP wraps
    if name == "zero3":
        assert config.deepspeed_config["zero_stage"] == 3


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_yaml_parses(path):
    data, model, args = make_parser().parse_args_and_config(["--config", str(path)], fail_with_unknown_args=True)
    assert args.precision in ("bf16", "fp16", "fp32") and model.model_preset and data.block_size > 0
    from openllm.models import get_preset_config
    from openllm.training.pretrain import check_block_size

    check_block_size(data.block_size, get_preset_config(model.model_preset, **(model.model_config_overrides or {})))


def test_unknown_yaml_key_fails(tmp_path):
    (tmp_path / "bad.yaml").write_text("model_preset: tiny\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="Unknown arguments from config file: \\['--learning_rat', '0.1'\\]"):
        make_parser().parse_args_and_config(["--config", str(tmp_path / "bad.yaml")])


def test_wsd_decay_given_as_a_fraction_of_the_run():
    from transformers import get_scheduler

    def schedule(max_steps, decay):
        args = PretrainConfig(output_dir="unused", max_steps=max_steps, warmup_steps=10, learning_rate=1.0,
                              lr_scheduler_type="warmup_stable_decay", lr_scheduler_kwargs={"num_decay_steps": decay})
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.get_warmup_steps(max_steps), max_steps,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        lrs = []
        for _ in range(max_steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return args.lr_scheduler_kwargs["num_decay_steps"], lrs

    decay, lrs = schedule(100, 0.2)  # the last 20 of 100 steps decay; the 70 before them hold the peak
    assert decay == 20 and lrs[10:80] == [1.0] * 70 and 0 < lrs[90] < lrs[81] < 1.0
    assert schedule(100, 20) == (20, lrs)  # the same as a whole number of steps
    assert schedule(40, 0.2)[0] == 8  # `--max_steps` alone rescales the schedule
    assert schedule(12, 0.5)[0] == 2  # never more decay than the steps after warmup
    with pytest.raises(ValueError, match="num_decay_steps=0.0 is a fraction of max_steps"):
        schedule(100, 0.0)


def test_precision_auto_matches_the_cpu():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_supports_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    args = PretrainConfig(output_dir="unused")

    assert args.bf16 == cpu_supports_bf16() and args.use_cpu == (not torch.cuda.is_available())
    assert PretrainConfig(output_dir="unused", precision="fp32").bf16 is False
    # an explicit bf16 goes through the same resolution, so the summary and card say bf16
    explicit = PretrainConfig(output_dir="unused", bf16=True)
    assert explicit.precision == "bf16" and explicit.use_cpu == (not torch.cuda.is_available())
    with pytest.raises(ValueError, match="bf16=True contradicts precision='fp32'"):
        PretrainConfig(output_dir="unused", bf16=True, precision="fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        PretrainConfig(output_dir="unused", precision="int8")


def test_finished_folder_has_evaluation_and_a_card_with_its_numbers(uninterrupted, workdir):
    from huggingface_hub import ModelCard

    folder = workdir / "full"
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["dataset"]["documents"] == uninterrupted["data"]["eval_documents"]
    assert results["metrics"]["perplexity"] == pytest.approx(math.exp(results["metrics"]["loss"]))
    card = ModelCard.load(folder / "README.md", ignore_metadata_errors=False)
    reported = {m["type"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert reported["perplexity"] == pytest.approx(results["metrics"]["perplexity"], rel=1e-5)
    assert "1 × " in card.text and f"{uninterrupted['metrics']['num_parameters']:,}" in card.text
    assert (folder / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
