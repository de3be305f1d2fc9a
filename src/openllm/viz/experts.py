"""Which experts the router of each Mixture-of-Experts layer chose for every token of a text.

    routing = expert_routing(model, tokenizer, "import json")
    routing.experts[0]        # (tokens, k) experts of the first MoE layer, best first
    routing.expert_bias       # (moe layers, experts) routing bias of loss-free balancing, or None
    plot_expert_routing(routing, path="experts.png")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.colors import ListedColormap

from .figures import pyplot, save_png
from .tokens import encode_with_pieces, label


@dataclass
class ExpertRouting:
    tokens: list[str]  # the text piece of each token, in order
    layers: list[int]  # index of each MoE layer in the model
    router_logits: torch.Tensor  # (moe layers, tokens, experts), fp32
    experts: torch.Tensor  # (moe layers, tokens, k) chosen experts, highest routing score first
    # (moe layers, experts): what each router adds to the probabilities to choose experts (loss-free balancing)
    expert_bias: torch.Tensor | None = None

    @property
    def top_expert(self):
        """(moe layers, tokens): the expert with the highest router probability."""
        return self.experts[..., 0]

    def expert_counts(self):
        """(moe layers, experts): how many of the text's tokens each expert received (any of the k slots)."""
        num_experts = self.router_logits.shape[-1]
        return torch.stack([torch.bincount(e.flatten(), minlength=num_experts) for e in self.experts])

    def expert_load(self):
        """(moe layers, experts): each expert's share of the text's routing slots times the number of experts (1.0 =
        balanced)."""
        counts = self.expert_counts().float()
        return counts / counts.sum(-1, keepdim=True) * counts.shape[-1]


def _router_biases(model, num_layers: int) -> torch.Tensor | None:
    """(moe layers, experts) `e_score_correction_bias` of every router, in layer order (the name OpenLLM and
    DeepSeek-V3 give it), or None when the routers have none."""
    biases = [b for m in model.modules() if isinstance(b := getattr(m, "e_score_correction_bias", None), torch.Tensor)]
    return torch.stack([b.detach().float().cpu() for b in biases]) if len(biases) == num_layers else None


def expert_routing(model, tokenizer, text: str, max_tokens: int = 128) -> ExpertRouting:
    """Run `text` through an MoE model with `output_router_logits=True` and read each layer's top-k choice the way
    the router makes it (top-k of the softmax over the router logits, plus the router's bias if it has one)."""
    config = model.config
    num_experts = getattr(config, "num_experts", 0) or getattr(config, "num_local_experts", 0)
    if not num_experts:
        raise ValueError(f"{getattr(config, 'model_type', type(model).__name__)} model has no experts "
                         "(num_experts is 0): expert routing needs a Mixture-of-Experts model.")
    ids, pieces = encode_with_pieces(tokenizer, text)
    if len(ids) > max_tokens:
        raise ValueError(f"The text has {len(ids)} tokens; routing pictures are readable up to {max_tokens}. "
                         "Shorten it or raise max_tokens.")
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], device=model.device), output_router_logits=True, use_cache=False)
    logits = torch.stack([r.float().cpu().reshape(len(ids), -1) for r in out.router_logits])  # (L, T, E)
    is_moe = getattr(config, "is_moe_layer", None)
    layers = ([i for i in range(config.num_hidden_layers) if is_moe(i)] if is_moe
              else list(range(len(out.router_logits))))
    k = getattr(config, "num_experts_per_tok", 1)
    bias = _router_biases(model, len(out.router_logits))
    scores = torch.softmax(logits, dim=-1) if bias is None else torch.softmax(logits, dim=-1) + bias[:, None, :]
    experts = torch.topk(scores, k, dim=-1).indices
    return ExpertRouting(tokens=pieces, layers=layers, router_logits=logits, experts=experts, expert_bias=bias)


def plot_expert_routing(routing: ExpertRouting, path=None, title: str | None = None):
    """One row per MoE layer, one column per token: the colour is the token's first-choice expert and the cell lists
    all k choices. Beside it, per layer and expert, the expert's load on this text (share × experts, 1.0 = balanced)
    and, for a model balanced without a loss, its routing bias. Returns the figure; with `path`, also saves it as a
    PNG."""
    plt = pyplot()
    num_layers, num_tokens, num_experts = routing.router_logits.shape
    palette = plt.get_cmap("tab10" if num_experts <= 10 else "tab20")
    cmap = ListedColormap([palette(i) for i in range(num_experts)])
    tokens_width, experts_width = max(2.5, 0.42 * num_tokens), 0.55 * num_experts + 0.4
    fig, (ax, side) = plt.subplots(1, 2, figsize=(tokens_width + experts_width + 2.5, 0.55 * num_layers + 1.6),
                                   gridspec_kw={"width_ratios": [tokens_width, experts_width], "wspace": 0.05})
    ax.imshow(routing.top_expert.numpy(), cmap=cmap, vmin=-0.5, vmax=num_experts - 0.5, aspect="auto")
    for layer in range(num_layers):
        for token in range(num_tokens):
            text = "\n".join(str(int(e)) for e in routing.experts[layer, token])
            ax.text(token, layer, text, ha="center", va="center", fontsize=7, color="white", fontweight="bold")
    ax.set_xticks(range(num_tokens), [label(t) for t in routing.tokens], rotation=90, fontsize=8)
    ax.set_yticks(range(num_layers), [f"layer {i}" for i in routing.layers], fontsize=8)
    ax.set_title(title or f"Expert routing (cell: the {routing.experts.shape[-1]} experts chosen, best first)",
                 fontsize=9)

    load, bias = routing.expert_load(), routing.expert_bias
    side.imshow(load.numpy(), cmap="coolwarm", vmin=0.0, vmax=2.0, aspect="auto")  # white where balanced
    for layer in range(num_layers):
        for e in range(num_experts):
            text = f"{load[layer, e]:.2f}" + ("" if bias is None else f"\n{bias[layer, e]:+.3f}")
            side.text(e, layer, text, ha="center", va="center", fontsize=6.5)
    side.set_xticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=8)
    for tick, e in zip(side.get_xticklabels(), range(num_experts)):
        tick.set_color(cmap(e))
    side.set_yticks([])
    side.set_xlabel("expert", fontsize=8)
    side.set_title("load × experts" + ("" if bias is None else "\nrouting bias"), fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(e)) for e in range(num_experts)]
    side.legend(handles, [f"expert {e}" for e in range(num_experts)], loc="upper left", bbox_to_anchor=(1.03, 1),
                fontsize=7, title="first choice", title_fontsize=7)
    if path is not None:
        save_png(fig, path)
    return fig
