# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2 · Inside the model
#
# An OpenLLM model is a decoder-only transformer: token embeddings, then layers of (RMSNorm → attention with
# rotary position embeddings → RMSNorm → MLP or Mixture-of-Experts), then a projection back to the vocabulary.
# This notebook trains a small Mixture-of-Experts model for a couple of hundred steps and looks inside it:
#
# 1. token embeddings, projected to 2-D, and their nearest neighbours;
# 2. rotary position embeddings (RoPE), the causal mask and the KV cache;
# 3. attention patterns per layer and head;
# 4. which expert each token was routed to.
#
# The pictures come from `openllm.viz`; the same ones are one command away: `openllm viz attention|experts MODEL`.

# %%
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

# everything is built in, so nothing needs the network
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
RUNS = Path("outputs/notebooks")  # under the folder the notebook runs in, shared by the five notebooks
IMAGES = RUNS / "images"
IMAGES.mkdir(parents=True, exist_ok=True)
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off anyway


def run(module, *args):
    """`python -m MODULE ARGS...` with this kernel's Python, as in a terminal; its last lines if it fails."""
    command = [sys.executable, "-m", module, *map(str, args)]
    print("$", "openllm" if module == "openllm" else f"python -m {module}", *command[3:])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise RuntimeError(f"{module} {args[0]} failed with exit status {done.returncode}")
    return done


# %% [markdown]
# ## A small MoE model, trained here
#
# `openllm pretrain` with the quickstart recipe that ships with the package, switched to four experts per layer
# (two active per token) and shortened to about half a minute on two CPU cores.

# %%
MOE = RUNS / "moe"
architecture = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=192)
if not (MOE / "training_summary.json").is_file():
    run("openllm", "pretrain", "--config", "pretrain_quickstart.yaml", "--model_preset", "tiny-moe",
        "--model_config_overrides", json.dumps(architecture), "--vocab_size", 2048, "--block_size", 128,
        "--per_device_train_batch_size", 16, "--max_steps", 150, "--learning_rate", 2e-3, "--warmup_steps", 15,
        "--eval_steps", 75, "--save_steps", 1000, "--final_eval_documents", 0, "--disable_tqdm", "true",
        "--output_dir", MOE)
summary = json.loads((MOE / "training_summary.json").read_text())
print({k: round(v, 3) if isinstance(v, float) else v for k, v in summary["metrics"].items() if k != "expert_load"})

# %%
import torch

from openllm.models.loading import load_causal_lm

model, tokenizer = load_causal_lm(str(MOE), device="cpu", dtype="float32")
config = model.config
print(f"{model.num_parameters():,} parameters · {config.num_hidden_layers} layers · hidden {config.hidden_size} · "
      f"{config.num_attention_heads} query heads sharing {config.num_key_value_heads} key/value heads · "
      f"{config.num_experts} experts, top-{config.num_experts_per_tok}")

# %% [markdown]
# ## 1 · Token embeddings
#
# Row *i* of the embedding matrix is the vector the model starts from when it reads token *i*. Tokens used in
# similar contexts drift towards similar vectors during training. A 2-D PCA keeps the two directions of largest
# variance; cosine similarity in the full space gives the nearest neighbours.

# %%
from openllm.viz.embeddings import pca_2d, plot_projection, token_embeddings, token_neighbours

groups = {
    "digits": [str(d) for d in range(10)],
    "keywords": [" def", " class", " return", " import", " if", " else", " for", " while", " None", " True"],
    "nouns": [" file", " string", " list", " object", " function", " value", " name", " number", " path"],
    "punctuation": [".", ",", ":", "(", ")", "[", "]", "="],
}
ids, labels, kinds = [], [], []
for kind, words in groups.items():
    for word in words:
        token_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(token_ids) == 1:
            ids.append(token_ids[0]), labels.append(word), kinds.append(kind)
points = pca_2d(token_embeddings(model)[ids])
title = f"Token embeddings after {summary['metrics']['tokens_seen']:,} tokens of training (PCA)"
fig = plot_projection(points, labels, groups=kinds, title=title)
fig.savefig(IMAGES / "embeddings.png", dpi=80)
plt.show()

# %%
for word, neighbours in token_neighbours(model, tokenizer, [" return", " file", "3", "("], k=5).items():
    print(f"{word!r:10} -> " + ", ".join(f"{t!r} {s:.2f}" for t, s in neighbours))

# %% [markdown]
# ## 2 · Rotary position embeddings
#
# Attention compares a query with keys by a dot product, which knows nothing about order. RoPE rotates each pair
# of query/key dimensions by an angle proportional to the position, at a different frequency per pair, so the
# dot product of a query at position *m* with a key at position *n* depends only on *m − n*.

# %%
from openllm.models.modeling_openllm import apply_rotary_pos_emb

rotary = model.model.rotary_emb
positions = torch.arange(128)[None]
cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)  # (1, positions, head_dim)

q, k = torch.randn(1, 1, 1, config.head_dim), torch.randn(1, 1, 1, config.head_dim)
def score(m, n):
    q_m, _ = apply_rotary_pos_emb(q, q, cos[:, m:m + 1], sin[:, m:m + 1])
    _, k_n = apply_rotary_pos_emb(k, k, cos[:, n:n + 1], sin[:, n:n + 1])
    return float((q_m * k_n).sum())

print("same offset, different positions:", [round(score(m, m - 3), 5) for m in (3, 10, 50, 100)])
print("different offsets:               ", [round(score(50, 50 - d), 5) for d in (0, 1, 3, 10)])

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
left.imshow(cos[0].T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
left.set(title="cos(position × frequency)", xlabel="position", ylabel="dimension (fast → slow)")
right.plot([score(100, 100 - d) for d in range(100)])
right.set(title="q·k of one query and key, by distance", xlabel="distance m − n", ylabel="score")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The causal mask
#
# A language model predicts each token from the ones before it, so position *i* may only attend to positions
# ≤ *i*. Change a later token and nothing before it moves (up to float rounding: the experts batch their tokens
# together, and a batch of another size sums in another order):

# %%
text = "def add(a, b):\n    return a + b"
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
changed = ids.clone()
changed[0, -1] = (changed[0, -1] + 1) % config.vocab_size
with torch.inference_mode():
    before, after = model(ids).logits, model(changed).logits
print("logits before the changed token equal:", torch.allclose(before[0, :-1], after[0, :-1], atol=1e-5))
print("logits at the changed token differ:   ", not torch.allclose(before[0, -1], after[0, -1]))

# %% [markdown]
# ## The KV cache
#
# Generating token by token, the keys and values of earlier tokens never change, so `generate` keeps them in a
# cache and each new step feeds only the new token. Each layer stores (batch, key/value heads, tokens, head dim):
# with grouped-query attention that is 2 key/value heads serving 4 query heads, half the memory.

# %%
with torch.inference_mode():
    prefix = model(ids[:, :-4], use_cache=True)
    cache = prefix.past_key_values
    print("cached after the prefix:", tuple(cache.layers[0].keys.shape))
    step_logits = []
    for t in range(ids.shape[1] - 4, ids.shape[1]):
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache, _ = out.past_key_values, step_logits.append(out.logits[:, -1])
    print("cached after 4 more steps:", tuple(cache.layers[0].keys.shape))
    full = model(ids).logits[:, -4:]
print("one token at a time with the cache = the full forward pass:",
      torch.allclose(torch.stack(step_logits, dim=1), full, atol=1e-5))

# %% [markdown]
# ## 3 · Attention, per layer and head
#
# Row *i* of each map is how token *i* spreads its attention over the tokens up to itself (each row sums to 1;
# everything above the diagonal is masked). Look for heads that attend to the previous token (a bright line just
# below the diagonal) and heads that gather on one early token (a bright column).

# %%
from openllm.viz.attention import attention_maps, plot_attention

maps = attention_maps(model, tokenizer, text)
plot_attention(maps, title=f"Attention for {text!r}")
plt.show()
fig = plot_attention(maps, layers=[1, 3], title=f"Attention for {text!r}, layers 1 and 3")  # the README's picture
fig.savefig(IMAGES / "attention.png", dpi=80, bbox_inches="tight")
plt.close(fig)

# %%
previous_token = torch.diagonal(maps.weights, offset=-1, dim1=-2, dim2=-1).mean(-1)  # (layers, heads)
for layer, row in enumerate(previous_token):
    print(f"layer {layer}: mean attention to the previous token per head", [round(float(x), 2) for x in row])

# %% [markdown]
# ## 4 · Mixture-of-Experts: where each token went
#
# In every MoE layer a router scores the 4 experts for each token and sends it to the best 2; only those two
# MLPs run. The colour is the first choice, the cell lists both.

# %%
from openllm.viz.experts import expert_routing, plot_expert_routing

routing = expert_routing(model, tokenizer, text)
fig = plot_expert_routing(routing)
fig.savefig(IMAGES / "experts.png", dpi=80, bbox_inches="tight")
plt.show()

# %% [markdown]
# Over a whole held-out document the load is roughly balanced, which is what the load-balancing loss that
# pretraining adds (`router_aux_loss_coef`) asks for: each expert should get about 1/4 of the token slots.

# %%
from openllm.data.corpus import BUILTIN_CORPUS, load_corpus

document = load_corpus(BUILTIN_CORPUS, eval_fraction=0.02).eval["text"][0]
routing = expert_routing(model, tokenizer, document[:600], max_tokens=512)
share = routing.expert_counts() / routing.expert_counts().sum(-1, keepdim=True)
for layer, row in zip(routing.layers, share):
    print(f"layer {layer}: share of token slots per expert", [f"{float(x):.2f}" for x in row])
