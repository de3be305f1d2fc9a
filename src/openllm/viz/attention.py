"""Attention weights of a causal LM for one prompt, per layer and head, and a grid of heatmaps of them.

    maps = attention_maps(model, tokenizer, "def add(a, b): return a + b")
    maps.weights.shape        # (layers, heads, tokens, tokens); row i: how token i spreads its attention
    plot_attention(maps, path="attention.png")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .figures import pyplot, save_png
from .tokens import encode_with_pieces, label


@dataclass
class AttentionMaps:
    tokens: list[str]  # the text piece of each token, in order
    weights: torch.Tensor  # (layers, heads, query, key), fp32, rows sum to 1


@contextlib.contextmanager
def eager_attention(model):
    """Run `model` with the eager attention kernel (the only one that returns its weights), then switch back."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


def attention_maps(model, tokenizer, text: str, max_tokens: int = 64) -> AttentionMaps:
    """Every layer's and head's attention weights over the tokens of `text` (at most `max_tokens` of them)."""
    ids, pieces = encode_with_pieces(tokenizer, text)
    if len(ids) > max_tokens:
        raise ValueError(f"The prompt has {len(ids)} tokens; attention maps are readable up to {max_tokens}. "
                         "Shorten the prompt or raise max_tokens.")
    with eager_attention(model), torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=model.device), output_attentions=True, use_cache=False)
    if not out.attentions or any(a is None for a in out.attentions):
        raise ValueError(f"{type(model).__name__} returned no attention weights with output_attentions=True.")
    weights = torch.stack([a[0].float().cpu() for a in out.attentions])  # (L, H, T, T)
    return AttentionMaps(tokens=pieces, weights=weights)


def plot_attention(maps: AttentionMaps, layers=None, heads=None, path=None, title: str | None = None):
    """A grid of heatmaps, one row per layer and one column per head (query tokens down, key tokens across).
    Returns the matplotlib figure; with `path`, also saves it as a PNG."""
    plt = pyplot()
    num_layers, num_heads, size, _ = maps.weights.shape
    layers = list(range(num_layers)) if layers is None else list(layers)
    heads = list(range(num_heads)) if heads is None else list(heads)
    labels = [label(t) for t in maps.tokens]
    cell = max(1.6, 0.16 * size)
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads) + 1, cell * len(layers) + 0.6),
                             squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(maps.weights[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(size), labels if r == len(layers) - 1 else [""] * size, rotation=90, fontsize=6)
            ax.set_yticks(range(size), labels if c == 0 else [""] * size, fontsize=6)
            ax.set_title(f"layer {layer} · head {head}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_png(fig, path)
    return fig
