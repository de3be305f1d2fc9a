import pytest
import torch
from viz_helpers import read_png

from openllm.viz.experts import expert_routing, plot_expert_routing

TEXT = "Calibration asks whether a model's confidence matches how often it is right."


def test_routing_is_the_routers_own_choice(moe_model, lm_tokenizer):
    """The experts reported are the ones the model's routers picked in the forward pass (captured with hooks)."""
    chosen = {}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out, n=n: chosen.__setitem__(n, out[2]))
             for n, layer in enumerate(moe_model.model.layers) if layer.is_moe]
    try:
        routing = expert_routing(moe_model, lm_tokenizer, TEXT)
    finally:
        for hook in hooks:
            hook.remove()
    config = moe_model.config
    size = len(lm_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert routing.layers == sorted(chosen) == [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
    assert routing.experts.shape == (len(routing.layers), size, config.num_experts_per_tok)
    assert torch.equal(routing.experts, torch.stack([chosen[n] for n in routing.layers]))
    assert torch.equal(routing.top_expert, routing.router_logits.argmax(-1))
    assert "".join(routing.tokens) == TEXT
    counts = routing.expert_counts()
    assert counts.shape == (len(routing.layers), config.num_experts)
    assert counts.sum(-1).tolist() == [size * config.num_experts_per_tok] * len(routing.layers)
    assert (counts > 0).sum() > len(routing.layers)  # an untrained router still spreads tokens over experts


def test_routing_with_loss_free_bias_is_the_routers_own_choice(lm_tokenizer, tmp_path):
    """A router with a balancing bias chooses by probability + bias; the picture shows the bias beside the load."""
    from viz_helpers import tiny

    import openllm

    torch.manual_seed(1)
    config = openllm.get_preset_config("tiny-moe", vocab_size=len(lm_tokenizer), router_expert_bias=True)
    model = openllm.OpenLLMForCausalLM(config).eval()
    bias = torch.tensor([0.3, -0.2, 0.0, 0.1])
    for layer in model.model.layers:
        layer.mlp.gate.e_score_correction_bias.copy_(bias)
    chosen = {}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out, n=n: chosen.__setitem__(n, out[2]))
             for n, layer in enumerate(model.model.layers)]
    try:
        routing = expert_routing(model, lm_tokenizer, TEXT)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(routing.experts, torch.stack([chosen[n] for n in routing.layers]))
    assert torch.equal(routing.expert_bias, bias.expand(2, 4))
    assert not torch.equal(routing.experts, torch.topk(routing.router_logits, 2).indices)  # the bias changed some
    assert (routing.experts == 0).any(-1).all()  # +0.3 puts expert 0 among every token's two
    load = routing.expert_load()
    torch.testing.assert_close(load.sum(-1), torch.full((2,), 4.0))
    fig = plot_expert_routing(routing, path=tmp_path / "experts.png")
    side = [t.get_text() for t in fig.axes[1].texts]
    assert side[0] == f"{load[0, 0]:.2f}\n+0.300" and side[1] == f"{load[0, 1]:.2f}\n-0.200"
    read_png(tmp_path / "experts.png")
    # without a bias, the side panel shows the load alone
    plain = plot_expert_routing(expert_routing(tiny(lm_tokenizer, "tiny-moe", seed=1), lm_tokenizer, TEXT))
    assert "\n" not in plain.axes[1].texts[0].get_text()


def test_dense_model_is_refused(dense_model, lm_tokenizer):
    with pytest.raises(ValueError, match="needs a Mixture-of-Experts model"):
        expert_routing(dense_model, lm_tokenizer, TEXT)


def test_routing_png(moe_model, lm_tokenizer, tmp_path):
    fig = plot_expert_routing(expert_routing(moe_model, lm_tokenizer, TEXT), path=tmp_path / "experts.png")
    cells = [t.get_text() for t in fig.axes[0].texts]
    routing = expert_routing(moe_model, lm_tokenizer, TEXT)
    assert cells[0] == "\n".join(str(int(e)) for e in routing.experts[0, 0])
    read_png(tmp_path / "experts.png")
