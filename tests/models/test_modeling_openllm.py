"""Model tests in the style of transformers' causal-LM tester: tiny configs, CPU, exact comparisons.

They run on transformers 5.x (`make test`) and 4.57 (`make test-compat`).
"""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from openllm import OpenLLMConfig, OpenLLMForCausalLM, OpenLLMForSequenceClassification, OpenLLMModel
from openllm.models.modeling_openllm import CACHE, expert_load, load_balancing_loss, output_cache, router_z_loss
from openllm.models.presets import PRESETS, get_preset_config, parameter_counts

VOCAB = 99


def tiny_config(**overrides) -> OpenLLMConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return OpenLLMConfig(**{**kwargs, **overrides})


def tiny_moe_config(**overrides) -> OpenLLMConfig:
    return tiny_config(**{"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, **overrides})


def make_model(config, attn="eager"):
    config._attn_implementation = attn
    return OpenLLMForCausalLM(config).eval()


@pytest.fixture(params=["dense", "moe"])
def config(request):
    return tiny_config() if request.param == "dense" else tiny_moe_config()


@pytest.fixture
def ids():
    return torch.randint(3, VOCAB, (3, 7))


def test_forward_shapes_and_loss(config, ids):
    model = make_model(config)
    out = model(ids, labels=ids)
    assert out.logits.shape == (3, 7, VOCAB)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    hidden = model.model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == config.num_hidden_layers + 1 and hidden[-1].shape == (3, 7, 32)


def test_overfits_one_batch(config, ids):
    model = make_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] > math.log(VOCAB) - 0.5  # starts near uniform
    assert losses[-1] < 0.2 * losses[0]


def test_cache_matches_full_forward(config, ids):
    model = make_model(config)
    full = model(ids).logits
    past = output_cache(model(ids[:, :-2], use_cache=True))
    step = model(ids[:, -2:], **{CACHE: past}).logits
    torch.testing.assert_close(step, full[:, -2:], atol=1e-5, rtol=0)


def test_greedy_generation_same_with_and_without_cache(config, ids):
    model = make_model(config)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with_cache = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)
    without = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kwargs)
    assert with_cache.shape == (3, 15)
    assert torch.equal(with_cache, without)
    # and the cache is really used: after the prompt, each step feeds the model one new token
    lengths = []
    hook = model.model.embed_tokens.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)
    hook.remove()
    assert lengths == [ids.shape[1]] + [1] * 7


def test_sdpa_equals_eager(config, ids):
    eager = make_model(config, "eager")
    sdpa = make_model(config, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    torch.testing.assert_close(sdpa(ids, attention_mask=mask).logits[0, 2:],
                               eager(ids, attention_mask=mask).logits[0, 2:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_matches_each_sequence_alone(config, attn):
    model = make_model(config, attn)
    rows = [torch.randint(3, VOCAB, (n,)) for n in (7, 4, 2)]
    batch = torch.zeros(3, 7, dtype=torch.long)  # pad id 0, left padding
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, 7 - len(row):] = row
        mask[i, 7 - len(row):] = 1
    logits = model(batch, attention_mask=mask).logits
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    generated = model.generate(batch, attention_mask=mask, **kwargs)[:, 7:]
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        torch.testing.assert_close(logits[i, 7 - len(row):], alone, atol=1e-5, rtol=1e-5)
        assert torch.equal(generated[i], model.generate(row[None], **kwargs)[0, len(row):])


def test_gradient_checkpointing_gives_same_gradients(config, ids):
    model = make_model(config).train()
    reference = make_model(config).train()
    reference.load_state_dict(model.state_dict())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    reference(ids, labels=ids).loss.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_save_load_round_trip_is_exact(config, ids, tmp_path):
    model = make_model(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "openllm"
    assert saved["auto_map"]["AutoModelForCausalLM"].endswith("modeling_openllm.OpenLLMForCausalLM")
    assert (tmp_path / "modeling_openllm.py").exists() and (tmp_path / "configuration_openllm.py").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded) is OpenLLMForCausalLM
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_auto_classes(tmp_path):
    config = tiny_config()
    assert type(AutoConfig.for_model("openllm", hidden_size=32, num_attention_heads=4)) is OpenLLMConfig
    assert type(AutoModel.from_config(config)) is OpenLLMModel
    assert type(AutoModelForCausalLM.from_config(config)) is OpenLLMForCausalLM
    assert type(AutoModelForSequenceClassification.from_config(config)) is OpenLLMForSequenceClassification


def test_trust_remote_code_loads_without_openllm(config, ids, tmp_path):
    """A checkpoint folder is self-contained: a process where `openllm` cannot be imported loads it."""
    model = make_model(config)
    model.save_pretrained(tmp_path)
    expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openllm"] = None  # any `import openllm` now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True,
                                                     attn_implementation="eager").eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(model(data["ids"]).logits, data["logits"], atol=0, rtol=0)
        out = model.generate(data["ids"], attention_mask=torch.ones_like(data["ids"]), max_new_tokens=3,
                             do_sample=False, pad_token_id=0)
        print("OK", type(model).__name__, out.shape[1])
    """)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK OpenLLMForCausalLM 10")


def test_tied_and_untied_embeddings():
    tied = OpenLLMForCausalLM(tiny_config())
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = OpenLLMForCausalLM(tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == VOCAB * 32


def test_initialisation_scheme():
    config = tiny_config(hidden_size=256, intermediate_size=512, num_hidden_layers=8, vocab_size=4096,
                         num_attention_heads=4)
    model = OpenLLMForCausalLM(config)
    std = lambda t: t.detach().float().std().item()  # noqa: E731
    layer = model.model.layers[3]
    assert std(layer.self_attn.q_proj.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.model.embed_tokens.weight) == pytest.approx(0.02, rel=0.05)
    assert std(layer.self_attn.o_proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert std(layer.mlp.down_proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
    plain = OpenLLMForCausalLM(tiny_config(hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                                           vocab_size=4096, num_attention_heads=4, scale_residual_init=False))
    assert std(plain.model.layers[3].self_attn.o_proj.weight) == pytest.approx(0.02, rel=0.05)


def test_rope_scaling_linear_stretches_positions(ids):
    base = make_model(tiny_config())
    scaled = make_model(tiny_config(rope_parameters={"rope_type": "linear", "factor": 2.0}))
    scaled.load_state_dict(base.state_dict())
    positions = torch.arange(7)[None].expand(3, 7)
    # linear scaling by 2 at position p is plain RoPE at position p / 2
    torch.testing.assert_close(scaled(ids, position_ids=positions * 2).logits,
                               base(ids, position_ids=positions).logits, atol=1e-5, rtol=1e-5)
    llama3 = tiny_config(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    inv = make_model(llama3).model.rotary_emb.inv_freq
    plain = base.model.rotary_emb.inv_freq  # head_dim 8: wavelengths 2*pi*[1, 10, 100, 1000]
    assert inv[0] == plain[0]  # shorter than 64 / high_freq_factor: kept
    assert inv[-1] == pytest.approx(plain[-1].item() / 8)  # longer than 64 / low_freq_factor: divided by factor
    assert plain[1] / 8 < inv[1] < plain[1]  # in between: interpolated


def test_config_validation_errors():
    with pytest.raises(ValueError, match="multiple of `num_key_value_heads`"):
        tiny_config(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        tiny_moe_config(num_experts_per_tok=5)
    with pytest.raises(ValueError, match="rope_type"):
        tiny_config(rope_parameters={"rope_type": "mystery", "factor": 2.0})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        tiny_config(rope_parameters={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match="mlp_only_layers"):
        tiny_moe_config(mlp_only_layers=[7])
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        get_preset_config("huge")


def test_config_round_trip_and_rope_scaling_alias(tmp_path):
    config = tiny_moe_config(mlp_only_layers=[0], rope_scaling={"type": "linear", "factor": 4.0})
    assert config.rope_parameters == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters["rope_type"] == "linear" and loaded.rope_parameters["factor"] == 4.0
    assert loaded.mlp_only_layers == [0] and loaded.num_experts == 4
    assert [loaded.is_moe_layer(i) for i in range(2)] == [False, True]


def test_presets_parameter_counts():
    for name in PRESETS:
        config = get_preset_config(name)
        if config.num_hidden_layers > 12:
            continue  # counting from shapes is checked on the smaller presets; building `large` takes seconds
        model = OpenLLMForCausalLM(config)
        total, active = parameter_counts(config)
        assert total == sum(p.numel() for p in model.parameters()), name
        assert (active == total) == (config.num_experts == 0)
    assert 24e6 < parameter_counts(get_preset_config("small"))[0] < 26e6
    assert 110e6 < parameter_counts(get_preset_config("medium"))[0] < 125e6
    assert 330e6 < parameter_counts(get_preset_config("large"))[0] < 370e6
    moe_total, moe_active = parameter_counts(get_preset_config("moe"))
    small_total, _ = parameter_counts(get_preset_config("small"))
    assert moe_total > 2 * small_total and abs(moe_active - small_total) / small_total < 0.01


# --- Mixture-of-Experts -------------------------------------------------------------------------------------------


def test_moe_outputs_aux_loss_and_router_logits(ids):
    model = make_model(tiny_moe_config(mlp_only_layers=[0]))
    assert [layer.is_moe for layer in model.model.layers] == [False, True]
    out = model(ids, labels=ids, output_router_logits=True)
    assert out.aux_loss.item() > 0
    assert len(out.router_logits) == 1 and out.router_logits[0].shape == (3 * 7, 4)
    assert model(ids).router_logits is None  # only when asked


def test_moe_routes_each_token_to_k_experts(ids):
    model = make_model(tiny_moe_config())
    model.get_expert_load(reset=True)
    out = model(ids, output_router_logits=True)
    block = model.model.layers[0].mlp
    weights = block.gate(torch.randn(5, 32))[1]
    assert weights.shape == (5, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))  # renormalised top-k
    load = model.get_expert_load(reset=False)
    assert set(load) == {0, 1}
    for layer_idx, fractions in load.items():
        counts = model.model.layers[layer_idx].mlp.expert_counts
        assert counts.sum().item() == 3 * 7 * 2  # every token goes to exactly k=2 experts
        torch.testing.assert_close(fractions.sum(), torch.tensor(1.0))
        torch.testing.assert_close(fractions, expert_load(out.router_logits[layer_idx], 2))
    model.get_expert_load(reset=True)
    assert model.get_expert_load() == {}


def test_moe_training_loss_includes_router_losses(ids):
    config = tiny_moe_config(router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    model = make_model(config)
    eval_out = model(ids, labels=ids, output_router_logits=True)
    model.train()
    train_out = model(ids, labels=ids)
    aux = torch.stack([load_balancing_loss(r, 2) for r in eval_out.router_logits]).mean()
    z = torch.stack([router_z_loss(r) for r in eval_out.router_logits]).mean()
    torch.testing.assert_close(eval_out.aux_loss, aux)
    torch.testing.assert_close(train_out.loss, eval_out.loss + 0.1 * aux + 0.01 * z)


def test_load_balancing_loss_values():
    balanced = torch.zeros(8, 4)  # uniform router: every expert equally likely
    balanced[torch.arange(8), torch.arange(8) % 4] = 1e-3  # break ties so top-1 spreads evenly
    assert load_balancing_loss(balanced, 1).item() == pytest.approx(1.0, abs=1e-3)
    collapsed = torch.tensor([[10.0, 0, 0, 0]]).expand(8, 4)  # every token to expert 0
    assert load_balancing_loss(collapsed, 1).item() == pytest.approx(4.0, abs=2e-3)
    # padding is ignored: masked tokens do not count
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]])
    mixed = torch.cat([balanced[:4], collapsed[:4]])
    assert load_balancing_loss(mixed, 1, mask).item() == pytest.approx(1.0, abs=1e-3)
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)


# --- sequence classification (reward head) ---------------------------------------------------------------------


def test_sequence_classification_reads_last_real_token():
    config = tiny_config(num_labels=1)
    model = OpenLLMForSequenceClassification(config).eval()
    row = torch.randint(3, VOCAB, (5,))
    alone = model(row[None]).logits
    right = torch.cat([row, torch.zeros(2, dtype=torch.long)])[None]
    left = torch.cat([torch.zeros(2, dtype=torch.long), row])[None]
    mask_right = (right != 0).long()
    mask_left = (left != 0).long()
    assert alone.shape == (1, 1)
    torch.testing.assert_close(model(right, attention_mask=mask_right).logits, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(left, attention_mask=mask_left).logits, alone, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([0.5])
    out = model(row[None], labels=labels)
    torch.testing.assert_close(out.loss, F.mse_loss(alone.squeeze(), labels.squeeze()))


def test_bf16_autocast_forward_close_to_fp32(ids):
    model = make_model(tiny_config(), "sdpa")
    reference = model(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max().item() < 0.05


@pytest.mark.skipif(not hasattr(OpenLLMForCausalLM, "generate_batch"), reason="continuous batching is new in 5.x")
def test_continuous_batching_matches_generate():
    from transformers import GenerationConfig

    model = make_model(tiny_config(), "sdpa")
    prompts = [torch.randint(3, VOCAB, (n,)).tolist() for n in (5, 9, 3)]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)
    # a small paged cache: by default it takes 90% of the free memory, about 15 GB of this machine's RAM
    try:  # transformers 5
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        kwargs = {"continuous_batching_config": ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64)}
    except ImportError:  # transformers 4.57
        config.num_blocks, config.max_batch_tokens, kwargs = 16, 64, {}
    results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False, **kwargs)
    outputs = sorted(results.values(), key=lambda r: int(r.request_id.split("_")[-1]))
    for prompt, result in zip(prompts, outputs):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)[0, len(prompt):]
        assert result.generated_tokens == expected.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Architecture options


def test_qk_norm_normalises_each_heads_queries_and_keys(ids):
    model = make_model(tiny_config(qk_norm=True))
    attn = model.model.layers[0].self_attn
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, args, out: seen.setdefault("q", out))
    with torch.no_grad():
        attn.q_norm.weight.fill_(1.0)
        plain = make_model(tiny_config())
        plain.load_state_dict(model.state_dict(), strict=False)
        out, ref = model(ids).logits, plain(ids).logits
    assert {"self_attn.q_norm.weight", "self_attn.k_norm.weight"} <= {
        n.split("layers.0.")[-1] for n, _ in model.named_parameters()}
    assert seen["q"].shape == (3, 7, 4, 8)  # per head, before the heads move to dim 1
    torch.testing.assert_close(seen["q"].pow(2).mean(-1), torch.ones(3, 7, 4), atol=1e-2, rtol=0)
    assert (out - ref).abs().max() > 1e-4  # the option changes the function
    assert "q_norm" not in dict(plain.model.layers[0].self_attn.named_children())


def test_qk_norm_cache_sdpa_and_generation_agree(ids):
    model = make_model(tiny_config(qk_norm=True))
    full = model(ids).logits
    with torch.no_grad():
        prefix = model(ids[:, :4], use_cache=True)
        step = model(ids[:, 4:], past_key_values=prefix.past_key_values).logits
    torch.testing.assert_close(step, full[:, 4:], atol=1e-5, rtol=0)
    sdpa = make_model(tiny_config(qk_norm=True), attn="sdpa")
    sdpa.load_state_dict(model.state_dict())
    torch.testing.assert_close(sdpa(ids).logits, full, atol=1e-5, rtol=0)


def test_zero_init_output_projections_start_each_layer_as_identity(ids):
    moe = OpenLLMForCausalLM(tiny_moe_config(zero_init_output_projections=True))
    model = OpenLLMForCausalLM(tiny_config(zero_init_output_projections=True))
    for m in (model, moe):
        for layer in m.model.layers:
            assert not layer.self_attn.o_proj.weight.any()
            down = layer.mlp.experts.down_proj if layer.is_moe else layer.mlp.down_proj.weight
            assert not down.any()
            assert layer.self_attn.q_proj.weight.std() > 0.01
    # the decoder passes the embeddings through unchanged, and training still moves every weight
    with torch.no_grad():
        hidden = model.model(ids).last_hidden_state
    torch.testing.assert_close(hidden, model.model.norm(model.model.embed_tokens(ids)))
    model.train()
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.o_proj.weight.grad.abs().sum() > 0


def test_final_logit_softcapping_bounds_the_logits(ids):
    model = make_model(tiny_config(final_logit_softcapping=2.0))
    plain = make_model(tiny_config())
    with torch.no_grad():
        model.lm_head.weight.mul_(100)
        plain.load_state_dict(model.state_dict())
        out, raw = model(ids, labels=ids), plain(ids).logits
    assert out.logits.abs().max() <= 2.0 < raw.abs().max()
    torch.testing.assert_close(out.logits, 2.0 * torch.tanh(raw / 2.0))
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="final_logit_softcapping` must be a positive number"):
        tiny_config(final_logit_softcapping=-1)


def test_options_survive_save_and_remote_code_load(ids, tmp_path):
    model = make_model(tiny_config(qk_norm=True, final_logit_softcapping=5.0, tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert loaded.config.qk_norm and loaded.config.final_logit_softcapping == 5.0
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-6, rtol=0)  # sdpa vs eager


@pytest.mark.parametrize("padded", [False, True])
def test_decode_step_mask_is_the_one_transformers_builds(config, padded):
    """A decode step under SDPA skips transformers' mask builder; the mask it uses instead is the builder's own."""
    from openllm.models.modeling_openllm import _causal_mask, _decode_step_mask, output_cache

    model = make_model(config, "sdpa")
    mask = torch.ones(2, 6, dtype=torch.long)
    if padded:
        mask[0, :2] = 0
    cache = output_cache(model(torch.randint(3, VOCAB, (2, 5)), attention_mask=mask[:, :5], use_cache=True))
    embeds = torch.zeros(2, 1, config.hidden_size)
    ours = _decode_step_mask(model.config, mask, cache, 1)
    theirs = _causal_mask(model.config, embeds, mask, torch.tensor([5]), cache, torch.full((2, 1), 5))
    if not padded:
        assert ours is None and theirs is None
    else:
        assert ours.dtype == theirs.dtype == torch.bool
        assert torch.equal(ours.expand_as(theirs), theirs)
