"""`optim: muon`: Muon on the decoder's weight matrices, AdamW on the rest, through the Trainer, resumable exactly."""

import json
import random

import pytest
import torch
from helpers.callbacks import CrashAt
from safetensors.torch import load_file
from transformers import TrainerCallback

from openllm import OpenLLMForCausalLM, get_preset_config
from openllm.data.tokenizer import train_tokenizer
from openllm.training.arguments import DataArguments, ModelArguments, PretrainConfig
from openllm.training.optim import create_muon_optimizer, muon_parameter_names
from openllm.training.pretrain import pretrain

MICRO = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
         "max_position_embeddings": 64}


def test_parameter_split_and_learning_rates():
    model = OpenLLMForCausalLM(get_preset_config("tiny-moe", tie_word_embeddings=False, qk_norm=True))
    names = set(muon_parameter_names(model))
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.layers.1.self_attn.o_proj.weight" in names
    for name, _ in model.named_parameters():
        routed_elsewhere = ("embed_tokens" in name or "lm_head" in name or "norm" in name or ".mlp.gate." in name
                            or ".experts." in name)
        assert (name in names) != routed_elsewhere, name
    args = PretrainConfig(output_dir="unused", optim="muon", learning_rate=3e-3, weight_decay=0.05)
    assert args.optim_muon and not PretrainConfig(output_dir="unused").optim_muon
    optimizer = create_muon_optimizer(model, args)
    assert isinstance(optimizer.muon, torch.optim.Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.muon.param_groups) == len(names)
    assert {g["lr"] for g in optimizer.param_groups} == {3e-3}
    no_decay = optimizer.adamw.param_groups[1]
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])


def test_step_moves_every_parameter_and_scheduler_scales_both():
    torch.manual_seed(0)
    model = OpenLLMForCausalLM(get_preset_config("tiny"))
    optimizer = create_muon_optimizer(model, PretrainConfig(output_dir="unused", optim="muon", learning_rate=1e-2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 512, (2, 16))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters()), "a parameter did not move"
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {5e-3}
    with pytest.raises(ValueError, match="not saved by MuonWithAdamW"):
        optimizer.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


class StepsSeen(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    rng = random.Random(0)
    words = "the cat dog sees likes builds red blue box sky map road house apples".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(200)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train_tokenizer(texts, vocab_size=300, output_dir=str(tmp_path / "tok"), show_progress=False)

    def run(out, callbacks=None):
        data = DataArguments(dataset_name=str(tmp_path / "corpus.jsonl"), text_column="text", block_size=32,
                             eval_fraction=0.05, tokenizer_name_or_path=str(tmp_path / "tok"))
        model = ModelArguments(model_preset="tiny", model_config_overrides=dict(MICRO))
        args = PretrainConfig(output_dir=str(tmp_path / out), optim="muon", max_steps=8, save_steps=4,
                              per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=2, logging_steps=1,
                              eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                              final_eval_documents=0)
        return pretrain(data, model, args, callbacks=callbacks)

    full = run("full")
    with pytest.raises(RuntimeError, match="simulated crash at step 6"):
        run("crash", callbacks=[CrashAt(6)])
    state = torch.load(tmp_path / "crash" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]  # Muon's momentum buffers were saved
    seen = StepsSeen()
    run("crash", callbacks=[seen])
    assert seen.steps == [5, 6, 7, 8]  # resumed from checkpoint-4, not trained again from the start
    expected, got = load_file(tmp_path / "full" / "model.safetensors"), load_file(
        tmp_path / "crash" / "model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    losses = [h["loss"] for h in full["log_history"] if "loss" in h]
    assert losses[-1] < losses[0] - 0.5  # and it trains
