import pytest
import torch
from viz_helpers import read_png

from openllm.viz.attention import attention_maps, plot_attention

PROMPT = "The quick brown fox jumps over the lazy dog."


def test_maps_are_causal_distributions_per_layer_and_head(dense_model, lm_tokenizer):
    maps = attention_maps(dense_model, lm_tokenizer, PROMPT)
    config = dense_model.config
    size = len(lm_tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    assert maps.weights.shape == (config.num_hidden_layers, config.num_attention_heads, size, size)
    assert "".join(maps.tokens) == PROMPT
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(maps.weights.shape[:-1]))
    future = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
    assert maps.weights[..., future].abs().max() == 0  # no token attends to a later one
    assert torch.all(maps.weights[..., 0, 0] == 1)  # the first token can only attend to itself
    # not a trivial pattern: heads differ, and later tokens spread their attention
    assert not torch.allclose(maps.weights[0, 0], maps.weights[0, 1])
    assert (maps.weights[..., -1, :] > 0).all()


def test_eager_weights_match_the_models_own_output(dense_model, lm_tokenizer):
    """The maps are what the model computes: its sdpa logits equal the eager run, and the backend is restored."""
    ids = torch.tensor([lm_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]])
    assert dense_model.config._attn_implementation == "sdpa"
    maps = attention_maps(dense_model, lm_tokenizer, PROMPT)
    assert dense_model.config._attn_implementation == "sdpa"
    dense_model.set_attn_implementation("eager")
    try:
        expected = dense_model(ids, output_attentions=True).attentions
    finally:
        dense_model.set_attn_implementation("sdpa")
    torch.testing.assert_close(maps.weights, torch.stack([a[0] for a in expected]))


def test_heatmap_png(dense_model, lm_tokenizer, tmp_path):
    maps = attention_maps(dense_model, lm_tokenizer, PROMPT)
    fig = plot_attention(maps, layers=[1], heads=[0, 3], path=tmp_path / "attn.png")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["layer 1 · head 0", "layer 1 · head 3"]
    read_png(tmp_path / "attn.png")


def test_long_prompt_is_refused_with_the_fix(dense_model, lm_tokenizer):
    with pytest.raises(ValueError, match="Shorten the prompt or raise max_tokens"):
        attention_maps(dense_model, lm_tokenizer, PROMPT * 20)
