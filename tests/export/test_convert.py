"""OpenLLM ↔ Llama / Mixtral conversion: equal logits both ways, configs mapped, clear refusals (4.57 and 5.x)."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
)

from openllm import OpenLLMForCausalLM, get_preset_config
from openllm.export.convert import convert_checkpoint, from_llama, from_mixtral, openllm_config, to_llama, to_mixtral
from openllm_cli import main as cli_main

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
# head_dim != hidden_size // heads, untied head, non-default eps/theta/ids: every mapped field is exercised
DENSE = dict(head_dim=24, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=50000.0, pad_token_id=0,
             bos_token_id=3, eos_token_id=4)


def random_model(preset, **overrides):
    model = OpenLLMForCausalLM(get_preset_config(preset, **overrides)).eval()
    with torch.no_grad():  # norms start at ones; make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture
def input_ids():
    # longer than original_max_position_embeddings, so llama3 scaling changes the result
    return torch.randint(0, 512, (2, 96))


@pytest.mark.parametrize("rope", [None, LLAMA3, {"rope_type": "linear", "factor": 4.0}])
def test_dense_round_trip_keeps_logits(rope, input_ids):
    model = random_model("tiny", rope_parameters=rope, **DENSE)
    llama = to_llama(model)
    assert isinstance(llama, LlamaForCausalLM)
    c = llama.config
    assert (c.head_dim, c.rms_norm_eps, c.tie_word_embeddings) == (24, 1e-6, False)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 3, 4)
    torch.testing.assert_close(logits(llama, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)

    back = from_llama(llama)
    assert isinstance(back, OpenLLMForCausalLM)
    assert back.config.rope_parameters == model.config.rope_parameters
    assert back.config.head_dim == 24 and not back.config.tie_word_embeddings
    torch.testing.assert_close(logits(back, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_rope_scaling_reaches_llama(input_ids):
    scaled, plain = random_model("tiny", rope_parameters=LLAMA3), random_model("tiny")
    plain.load_state_dict(scaled.state_dict())
    # the scaling matters for these inputs, and the Llama copy reproduces the scaled model, not the plain one
    assert (logits(scaled, input_ids) - logits(plain, input_ids)).abs().max() > 1e-3
    torch.testing.assert_close(logits(to_llama(scaled), input_ids), logits(scaled, input_ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("rope", [None, LLAMA3])
def test_moe_round_trip_keeps_logits(rope, input_ids):
    model = random_model("tiny-moe", rope_parameters=rope, router_aux_loss_coef=0.02)
    mixtral = to_mixtral(model)
    assert isinstance(mixtral, MixtralForCausalLM)
    c = mixtral.config
    assert (c.num_local_experts, c.num_experts_per_tok, c.intermediate_size) == (4, 2, 80)
    assert c.router_aux_loss_coef == 0.02
    torch.testing.assert_close(logits(mixtral, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)

    back = from_mixtral(mixtral)
    assert back.config.num_experts == 4 and back.config.moe_intermediate_size == 80
    torch.testing.assert_close(logits(back, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # the same router logits in every layer, so the same experts are chosen
    with torch.no_grad():
        ours = model(input_ids, output_router_logits=True).router_logits
        theirs = mixtral(input_ids, output_router_logits=True).router_logits
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def make_tokenizer(folder):
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(["the model converts to llama and back again"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


@pytest.mark.parametrize("preset, target, target_class", [("tiny", "llama", LlamaForCausalLM),
                                                          ("tiny-moe", "mixtral", MixtralForCausalLM)])
def test_folder_conversion_loads_without_remote_code(tmp_path, preset, target, target_class, input_ids, capsys):
    src, dst, back = tmp_path / "openllm", tmp_path / target, tmp_path / "back"
    model = random_model(preset, rope_parameters=LLAMA3)
    model.save_pretrained(src)
    tokenizer = make_tokenizer(src)

    assert cli_main(["convert", str(src), str(dst), "--to", target]) == 0
    assert f"Wrote the {target} checkpoint to {dst}" in capsys.readouterr().out
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert not list(dst.glob("*.py"))  # nothing to trust: a stock transformers architecture
    # both RoPE spellings, so transformers 4.57 and 5.x read the same frequencies
    assert config["rope_theta"] == 10000.0 and config["rope_scaling"]["rope_type"] == "llama3"
    loaded = AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=False)
    assert type(loaded) is target_class
    torch.testing.assert_close(logits(loaded, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(dst)("to llama").input_ids == tokenizer("to llama").input_ids

    assert convert_checkpoint(dst, back, to="openllm") <= 1e-5
    again = AutoModelForCausalLM.from_pretrained(back)
    assert type(again) is OpenLLMForCausalLM
    torch.testing.assert_close(logits(again, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)


def test_hybrid_moe_cannot_become_mixtral():
    for overrides in (dict(mlp_only_layers=[0]), dict(decoder_sparse_step=2)):
        model = random_model("tiny-moe", **overrides)
        with pytest.raises(ValueError, match=r"Layers \[0\] of this model are dense .* Keep it as an OpenLLM"):
            to_mixtral(model)


def test_unnormalised_routing_cannot_become_mixtral():
    with pytest.raises(ValueError, match="norm_topk_prob=False .* Mixtral always renormalises"):
        to_mixtral(random_model("tiny-moe", norm_topk_prob=False))


def test_wrong_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Mixture-of-Experts model .* `--to mixtral`"):
        to_llama(random_model("tiny-moe"))
    with pytest.raises(ValueError, match="dense model .* `--to llama`"):
        to_mixtral(random_model("tiny"))
    random_model("tiny").save_pretrained(tmp_path / "openllm")
    with pytest.raises(ValueError, match="holds a 'openllm' model, but `--to openllm` converts from 'llama' or"):
        convert_checkpoint(tmp_path / "openllm", tmp_path / "out", to="openllm")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out", to="llama")


def test_llama_features_without_equivalent_are_refused():
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match="RoPE scaling 'dynamic' has no OpenLLM equivalent"):
        openllm_config(LlamaConfig(**base, rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    with pytest.raises(ValueError, match="bias terms"):
        openllm_config(LlamaConfig(**base, attention_bias=True))


def test_expert_layouts_are_inverse():
    # transformers 5.x runs one layout and 4.57 the other; check both on either version
    from openllm.export.convert import _fuse_experts, _unfuse_experts

    state_dict = random_model("tiny-moe").state_dict()
    per_expert = _unfuse_experts(state_dict)
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in per_expert
    assert per_expert["model.layers.0.block_sparse_moe.experts.2.w1.weight"].shape == (80, 64)
    fused = _fuse_experts(per_expert, num_experts=4)
    assert fused.keys() == state_dict.keys()
    assert all(torch.equal(fused[k], v) for k, v in state_dict.items())


def test_options_llama_cannot_express_are_refused():
    for overrides, reason in ((dict(qk_norm=True), "qk_norm=True normalises queries and keys"),
                              (dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0 caps the logits")):
        with pytest.raises(ValueError, match=f"cannot be converted to Llama .*{reason}.* Keep it as an OpenLLM"):
            to_llama(random_model("tiny", **overrides))
        with pytest.raises(ValueError, match=f"cannot be converted to Mixtral .*{reason}"):
            to_mixtral(random_model("tiny-moe", **overrides))


def test_options_llama_can_express_convert_losslessly(input_ids):
    # zero-initialised output projections change only the starting point; an untied head is a Llama field
    model = random_model("tiny", zero_init_output_projections=True, tie_word_embeddings=False)
    with torch.no_grad():
        for layer in model.model.layers:  # as after training: the projections have moved away from zero
            layer.self_attn.o_proj.weight.normal_(0, 0.02)
            layer.mlp.down_proj.weight.normal_(0, 0.02)
    llama = to_llama(model)
    assert not llama.config.tie_word_embeddings
    torch.testing.assert_close(logits(llama, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)
    back = from_llama(llama)
    torch.testing.assert_close(logits(back, input_ids), logits(model, input_ids), atol=1e-5, rtol=0)
