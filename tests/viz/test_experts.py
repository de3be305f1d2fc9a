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


def test_dense_model_is_refused(dense_model, lm_tokenizer):
    with pytest.raises(ValueError, match="needs a Mixture-of-Experts model"):
        expert_routing(dense_model, lm_tokenizer, TEXT)


def test_routing_png(moe_model, lm_tokenizer, tmp_path):
    fig = plot_expert_routing(expert_routing(moe_model, lm_tokenizer, TEXT), path=tmp_path / "experts.png")
    cells = [t.get_text() for t in fig.axes[0].texts]
    routing = expert_routing(moe_model, lm_tokenizer, TEXT)
    assert cells[0] == "\n".join(str(int(e)) for e in routing.experts[0, 0])
    read_png(tmp_path / "experts.png")
