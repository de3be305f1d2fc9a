"""Write the notebooks in this folder from the sources below, without outputs.

    python notebooks/build_notebooks.py            # rewrites notebooks/*.ipynb

Each source is a list of cells in the percent format: a cell starts at a line `# %%` (code) or `# %% [markdown]`.
"""

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# The first code cell of every notebook: work from the repository root (wherever Jupyter started), use this
# checkout's code, and stay offline.
SETUP = '''
# %%
import json
import os
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "recipes" / "pretrain.py").is_file())
os.chdir(ROOT)
if (ROOT / "src" / "openllm").is_dir():  # a source checkout: its code, here and in the recipes we launch
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
RUNS = Path("outputs/notebooks")
IMAGES = Path("notebooks/images") if Path("notebooks").is_dir() else RUNS / "images"
IMAGES.mkdir(parents=True, exist_ok=True)
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off anyway
'''

# Launching a recipe the way a person would, and showing its last lines if it fails.
RUN_RECIPE = '''
# %%
import subprocess


def run(*command):
    """Run `python COMMAND...` from the repository root; print the command, fail loudly with its output."""
    command = [sys.executable, *map(str, command)]
    print("$ python", " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\\n")
        raise RuntimeError(f"{command[1]} failed with exit status {done.returncode}")
    return done
'''

# One small pretraining run shared by the notebooks that need a trained dense model (3 and 5): the quickstart
# recipe, shrunk to about half a minute on two CPU cores.
PRETRAIN_DENSE = '''
# %%
DENSE = RUNS / "dense"
PRETRAIN_FLAGS = ["--vocab_size", 2048, "--block_size", 128, "--per_device_train_batch_size", 16,
                  "--max_steps", 150, "--learning_rate", 2e-3, "--warmup_steps", 15, "--logging_steps", 5,
                  "--eval_steps", 50, "--save_steps", 1000, "--final_eval_documents", 149, "--disable_tqdm", "true"]


def pretrain_dense():
    """The quickstart recipe, shorter; a finished folder is reused (rerunning the recipe would resume at its end)."""
    if not (DENSE / "eval_results.json").is_file():
        run("recipes/pretrain.py", "--config", "recipes/pretrain_quickstart.yaml", *PRETRAIN_FLAGS,
            "--output_dir", DENSE)
    return json.loads((DENSE / "training_summary.json").read_text())
'''

NOTEBOOKS = {}

NOTEBOOKS["1_tokenizers.ipynb"] = '''
# %% [markdown]
# # 1 · Tokenizers
#
# A language model reads integers, not text. A tokenizer decides which pieces of text become which integers, and
# that choice sets how long every sequence is, what the model can spell, and what it never sees.
#
# This notebook trains the three kinds OpenLLM offers (`openllm.data.tokenizer.train_tokenizer`) on the same
# corpus and compares them:
#
# - **byte-level BPE**: starts from the 256 bytes and greedily merges the most frequent adjacent pair;
# - **Unigram**: starts from many candidate pieces and prunes the ones that least help a unigram language model;
# - **characters**: one token per character.
#
# The corpus is `builtin:python-docs`: the docstrings of Python's standard library, read from this machine's
# Python, so nothing is downloaded.
''' + SETUP + '''
# %%
from openllm.data.corpus import BUILTIN_CORPUS, load_corpus

corpus = load_corpus(BUILTIN_CORPUS, eval_fraction=0.02)
train_texts, held_out = list(corpus.train["text"]), list(corpus.eval["text"])
print(f"{len(train_texts):,} training documents, {len(held_out):,} held out, "
      f"{corpus.stats['characters']:,} characters")
print("---\\n" + held_out[3][:400])

# %% [markdown]
# ## Train three tokenizers
#
# Same texts, same special tokens (`<|pad|>`, `<|bos|>`, `<|eos|>`, `<|unk|>`, chat roles). To keep this quick we
# train on every fourth document (about 0.45 M characters).

# %%
import time

from openllm.data.tokenizer import train_tokenizer

sample = train_texts[::4]
tokenizers = {}
for kind, vocab_size in [("bpe", 4096), ("unigram", 4096), ("char", 512)]:
    start = time.perf_counter()
    tokenizers[kind] = train_tokenizer(sample, vocab_size=vocab_size, tokenizer_type=kind, show_progress=False)
    print(f"{kind:8} {len(tokenizers[kind]):5,} tokens   trained in {time.perf_counter() - start:4.1f} s")

# %% [markdown]
# ## The same sentence, three ways

# %%
sentence = "json.dumps(obj) serializes obj to a JSON formatted str."
for kind, tok in tokenizers.items():
    pieces = [tok.decode([i]) for i in tok(sentence, add_special_tokens=False)["input_ids"]]
    print(f"{kind:8} {len(pieces):3} tokens: " + "|".join(pieces))

# %% [markdown]
# ## Tokens per byte on held-out text
#
# Fewer tokens per byte means shorter sequences: more text fits in the context and each training step sees more
# of it. Characters need about one token per byte; subword vocabularies compress several-fold, and a larger
# vocabulary compresses more, with diminishing returns. (Bits per byte, which `openllm eval` reports, is the
# measure that stays comparable across these choices.)

# %%
held_out_bytes = sum(len(t.encode("utf-8")) for t in held_out)


def tokens_per_byte(tok):
    return sum(len(ids) for ids in tok(held_out, add_special_tokens=False)["input_ids"]) / held_out_bytes


for kind, tok in tokenizers.items():
    print(f"{kind:8} {tokens_per_byte(tok):.3f} tokens per byte ({1 / tokens_per_byte(tok):.2f} bytes per token)")

sizes = [300, 512, 1024, 2048, 4096, 8192]
bpe_curve = [tokens_per_byte(train_tokenizer(sample, vocab_size=v, show_progress=False)) for v in sizes]
# Unigram training is the slowest of the three, so one more size only
unigram_points = {1024: tokens_per_byte(train_tokenizer(sample, vocab_size=1024, tokenizer_type="unigram",
                                                        show_progress=False)),
                  4096: tokens_per_byte(tokenizers["unigram"])}

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(sizes, bpe_curve, marker="o", label="byte-level BPE")
ax.plot(list(unigram_points), list(unigram_points.values()), marker="s", label="Unigram")
ax.axhline(tokens_per_byte(tokenizers["char"]), color="gray", linestyle="--", label="characters")
ax.set(xscale="log", xlabel="vocabulary size", ylabel="tokens per byte (held-out)",
       title="Compression of held-out docstrings")
ax.set_xticks(sizes, [str(s) for s in sizes])
ax.minorticks_off()
ax.legend()
fig.tight_layout()
fig.savefig(IMAGES / "tokenizers.png", dpi=80)
plt.show()

# %% [markdown]
# ## What BPE learned: its merges, in order
#
# Each merge joins two existing tokens into a new one. The first merges are the most frequent pairs in the
# corpus; byte-level BPE writes a space as `Ġ` and a newline as `Ċ`.

# %%
merges = json.loads(tokenizers["bpe"].backend_tokenizer.to_str())["model"]["merges"]
show = lambda pair: " + ".join(repr(p.replace("Ġ", " ").replace("Ċ", "\\n")) for p in pair)  # noqa: E731
print(f"{len(merges):,} merges. The first 12:")
for rank, pair in enumerate(merges[:12]):
    print(f"  {rank:4}  {show(pair)}")
print("... and the last 6:")
for rank, pair in enumerate(merges[-6:], start=len(merges) - 6):
    print(f"  {rank:4}  {show(pair)}")

# %% [markdown]
# ## Round trips
#
# `decode(encode(text)) == text`? Byte-level BPE can encode any string, so it always round-trips. Unigram and
# characters only know what they saw in training: anything else becomes `<|unk|>` and is lost.

# %%
probe = "naïve café → 東京 🙂\\n\\tindented"
for kind, tok in tokenizers.items():
    back = tok.decode(tok(probe, add_special_tokens=False)["input_ids"])
    same = sum(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in held_out)
    print(f"{kind:8} held-out documents restored exactly: {same}/{len(held_out)}   probe -> {back!r}")
'''

NOTEBOOKS["2_inside_the_model.ipynb"] = '''
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
''' + SETUP + RUN_RECIPE + '''
# %% [markdown]
# ## A small MoE model, trained here
#
# The pretraining recipe with the quickstart config, switched to four experts per layer (two active per token)
# and shortened to about half a minute on two CPU cores.

# %%
MOE = RUNS / "moe"
architecture = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=192)
if not (MOE / "training_summary.json").is_file():
    run("recipes/pretrain.py", "--config", "recipes/pretrain_quickstart.yaml", "--model_preset", "tiny-moe",
        "--model_config_overrides", json.dumps(architecture), "--vocab_size", 2048, "--block_size", 128,
        "--per_device_train_batch_size", 16, "--max_steps", 150, "--learning_rate", 2e-3, "--warmup_steps", 15,
        "--eval_steps", 75, "--save_steps", 1000, "--final_eval_documents", 0, "--disable_tqdm", "true",
        "--output_dir", MOE)
summary = json.loads((MOE / "training_summary.json").read_text())
print({k: round(v, 3) if isinstance(v, float) else v for k, v in summary["metrics"].items() if k != "expert_load"})

# %%
import torch

from openllm.evaluation.generation import load_causal_lm

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
# ≤ *i*. Change a later token and nothing before it moves:

# %%
text = "def add(a, b):\\n    return a + b"
ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
changed = ids.clone()
changed[0, -1] = (changed[0, -1] + 1) % config.vocab_size
with torch.inference_mode():
    before, after = model(ids).logits, model(changed).logits
print("logits before the changed token equal:", torch.equal(before[0, :-1], after[0, :-1]))
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
'''

NOTEBOOKS["3_train_and_sample.ipynb"] = '''
# %% [markdown]
# # 3 · Train and sample
#
# One short pretraining run with the recipe, exactly as on the command line, then its loss curve and samples at
# several decoding settings side by side.
#
# The recipe is `recipes/pretrain.py` with `recipes/pretrain_quickstart.yaml` (built-in corpus, a byte-level BPE
# tokenizer trained on the fly, a 1.3M-parameter model). Flags override the YAML; here they make the run about half a
# minute on two CPU cores. Everything the run produced is in its output folder: the model, the tokenizer,
# `training_summary.json` (the log history) and `eval_results.json` (held-out metrics and sample generations).
''' + SETUP + RUN_RECIPE + PRETRAIN_DENSE + '''
# %%
summary = pretrain_dense()
results = json.loads((DENSE / "eval_results.json").read_text())
metrics = results["metrics"]
print(f"{summary['metrics']['num_parameters']:,} parameters, {summary['metrics']['tokens_seen']:,} tokens, "
      f"{summary['training_args']['max_steps']} steps of {summary['training_args']['tokens_per_step']:,} tokens")
print(f"held-out: loss {metrics['loss']:.3f} · perplexity {metrics['perplexity']:.1f} · "
      f"{metrics['bits_per_byte']:.3f} bits/byte · next-token accuracy {metrics['accuracy']:.3f}")
print(sorted(p.name for p in DENSE.iterdir()))

# %% [markdown]
# ## The loss curve
#
# Training loss every 5 steps and held-out loss every 50, both in nats per token. The dashed line is the loss of
# a model that guesses uniformly over the vocabulary, ln(vocabulary size), where training starts.

# %%
import math

history = summary["log_history"]
train = [(e["step"], e["loss"]) for e in history if "loss" in e]
held = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
vocab_size = json.loads((DENSE / "config.json").read_text())["vocab_size"]

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(*zip(*train), label="training loss")
ax.plot(*zip(*held), "o-", label="held-out loss")
ax.axhline(math.log(vocab_size), color="gray", linestyle="--", label=f"uniform guess, ln {vocab_size}")
ax.set(xlabel="optimizer step", ylabel="loss (nats per token)", title="Pretraining on Python docstrings")
ax.legend()
fig.tight_layout()
fig.savefig(IMAGES / "loss_curve.png", dpi=80)
plt.show()

# %% [markdown]
# ## Sampling, side by side
#
# The model gives a probability to every next token; decoding decides what to do with it.
#
# - **greedy**: always the most likely token — deterministic, and prone to loops;
# - **temperature** *T*: divide the logits by *T* before the softmax: below 1 sharpens, above 1 flattens;
# - **top-k**: sample only among the *k* most likely tokens;
# - **top-p** (nucleus): sample among the smallest set of tokens whose probabilities add up to *p*.
#
# `openllm.evaluation.generation.generate` (the function behind `openllm generate`) does each with a seed.

# %%
import html

from IPython.display import HTML, display

from openllm.evaluation.generation import generate, load_causal_lm

model, tokenizer = load_causal_lm(str(DENSE), device="cpu", dtype="float32")
settings = {
    "greedy": dict(greedy=True),
    "T 0.7, top-k 40": dict(temperature=0.7, top_k=40, top_p=1.0),
    "T 1.0, top-p 0.9": dict(temperature=1.0, top_k=0, top_p=0.9),
    "T 1.5, no cut-off": dict(temperature=1.5, top_k=0, top_p=1.0),
}
prompts = ["json.dumps Serialize", "Return the number of", "os.path.join"]
rows = []
for prompt in prompts:
    cells = [generate(model, tokenizer, prompt, max_new_tokens=24, seed=0, **kw) for kw in settings.values()]
    rows.append("<tr><th>" + html.escape(prompt) + "</th>"
                + "".join(f"<td><pre>{html.escape(c)}</pre></td>" for c in cells) + "</tr>")
display(HTML("<table><tr><th>prompt</th>" + "".join(f"<th>{s}</th>" for s in settings) + "</tr>"
             + "".join(rows) + "</table>"))

# %% [markdown]
# What the settings do to the next-token distribution after one prompt: the same logits, divided by three
# temperatures.

# %%
import torch

prompt = "Return the number of"
with torch.inference_mode():
    logits = model(**tokenizer(prompt, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
top = torch.topk(logits, 12).indices
fig, ax = plt.subplots(figsize=(8, 3.4))
for offset, temperature in zip((-0.27, 0, 0.27), (0.5, 1.0, 1.5)):
    probs = torch.softmax(logits / temperature, dim=-1)[top]
    ax.bar(torch.arange(12) + offset, probs, width=0.27, label=f"T = {temperature}")
ax.set_xticks(range(12), [repr(tokenizer.decode([int(i)])) for i in top], rotation=45, ha="right")
ax.set(ylabel="probability", title=f"Next token after {prompt!r}: the 12 most likely")
ax.legend()
fig.tight_layout()
fig.savefig(IMAGES / "temperature.png", dpi=80)
plt.show()
'''

NOTEBOOKS["4_post_training.ipynb"] = '''
# %% [markdown]
# # 4 · Post-training: SFT → DPO → RL
#
# Pretraining teaches a model to continue text. Post-training teaches it to answer. This notebook runs the three
# stages of the post-training recipes on tasks whose answers a program can check, so "did it get better?" has an
# exact answer after every stage:
#
# 1. **SFT** (`recipes/sft.py`): supervised fine-tuning on prompt → correct answer conversations;
# 2. **DPO** (`recipes/dpo.py`): direct preference optimisation on pairs (correct answer preferred to a plausible
#    wrong one);
# 3. **RL** (`recipes/rlhf.py`): GRPO — sample several answers per prompt, reward the correct ones, and push the
#    policy towards them.
#
# Each stage is the recipe with its `*_debug.yaml` config and a few overrides, launched as on the command line.
# Each writes `training_summary.json`, which records the held-out exact-match accuracy before and after.
''' + SETUP + RUN_RECIPE + '''
# %% [markdown]
# ## The tasks
#
# `openllm:mix` mixes three synthetic tasks — addition, parity, reversal — with held-out questions that never
# appear in training.

# %%
from openllm.data.post_training import format_examples, make_task_examples

for example in format_examples(make_task_examples(n=6, split="test", seed=3), "sft")[:3]:
    print(example["messages"])

# %% [markdown]
# ## An untrained starting point
#
# A `tiny` OpenLLM (2 layers, hidden 64) with random weights and the tasks' small tokenizer. Starting from
# scratch keeps this fast; the recipes take any causal LM (`model_name_or_path`).

# %%
POST = RUNS / "post-training"
BASE, SFT, DPO, RL = (POST / name for name in ("base", "sft", "dpo", "rl"))
if not (BASE / "config.json").is_file():
    run("-m", "openllm.training.posttrain", "init-base", BASE, "--preset", "tiny")

COMMON = ["--max_eval_samples", 90, "--disable_tqdm", "true", "--logging_steps", 10]
STAGES = {  # stage: (recipe, its debug config, input model, output folder, overrides)
    "SFT": ("sft", BASE, SFT, ["--max_steps", 200, "--per_device_train_batch_size", 32, "--learning_rate", 3e-3,
                               "--max_train_samples", 4000]),
    "DPO": ("dpo", SFT, DPO, ["--max_steps", 30, "--per_device_train_batch_size", 32, "--learning_rate", 5e-5,
                              "--max_train_samples", 2000]),
    "RL": ("rlhf", DPO, RL, ["--max_steps", 8, "--per_device_train_batch_size", 32, "--num_generations", 8,
                             "--learning_rate", 2e-5, "--reward_model_name_or_path", "",
                             "--reward_funcs", "accuracy", "--logging_steps", 2]),
}
summaries = {}
for stage, (recipe, source, output, overrides) in STAGES.items():
    if not (output / "training_summary.json").is_file():
        run(f"recipes/{recipe}.py", "--config", f"recipes/{recipe}_debug.yaml", "--model_name_or_path", source,
            "--output_dir", output, *COMMON, *overrides)
    summaries[stage] = json.loads((output / "training_summary.json").read_text())
    m = summaries[stage]["metrics"]
    print(f"{stage:4} held-out accuracy {m['initial_eval_answer_accuracy']:.1%} -> {m['eval_answer_accuracy']:.1%}"
          f"   ({summaries[stage]['train_runtime_s']:.0f} s of training)")

# %% [markdown]
# ## Accuracy before and after each stage
#
# Exact match on held-out questions, greedy decoding, as each stage's `training_summary.json` recorded it.
# Each stage also logs its own objective: the SFT loss, DPO's preference accuracy and reward margin, GRPO's mean
# reward.

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
names = list(summaries)
before = [summaries[s]["metrics"]["initial_eval_answer_accuracy"] for s in names]
after = [summaries[s]["metrics"]["eval_answer_accuracy"] for s in names]
ax.bar([i - 0.2 for i in range(len(names))], before, width=0.4, label="before", color="tab:gray")
ax.bar([i + 0.2 for i in range(len(names))], after, width=0.4, label="after", color="tab:green")
for i, (b, a) in enumerate(zip(before, after)):
    ax.text(i - 0.2, b + 0.01, f"{b:.0%}", ha="center", fontsize=8)
    ax.text(i + 0.2, a + 0.01, f"{a:.0%}", ha="center", fontsize=8)
ax.set_xticks(range(len(names)), names)
ax.set(ylabel="held-out exact-match accuracy", ylim=(0, 1), title="Post-training on checkable tasks")
ax.legend()
fig.tight_layout()
fig.savefig(IMAGES / "post_training.png", dpi=80)
plt.show()

for stage, summary in summaries.items():
    m = summary["metrics"]
    shown = ("initial_eval_loss", "eval_loss", "initial_eval_rewards/accuracies", "eval_rewards/accuracies",
             "initial_eval_rewards/margins", "eval_rewards/margins")
    print(f"{stage:4}", {k: round(m[k], 3) for k in shown if k in m})
rewards = [e["reward"] for e in summaries["RL"]["log_history"] if "reward" in e]
print("RL mean reward per logged step:", [round(r, 2) for r in rewards])

# %% [markdown]
# ## Task by task
#
# The mix hides how different the three tasks are: parity is one token to learn, addition needs carrying, and
# reversing letters needs attention to positions the tiny model barely has. `answer_accuracy` (what the recipes
# call) scores each task's held-out questions separately.

# %%
from openllm.data.post_training import TASKS
from openllm.evaluation.generation import generate, load_causal_lm
from openllm.training.posttrain import answer_accuracy

models = {"untrained": BASE, "SFT": SFT, "DPO": DPO, "RL": RL}
questions = {task: format_examples(make_task_examples((task,), 30, "test", seed=1), "rlhf") for task in TASKS}
print(f"{'':10}" + "".join(f"{task:>10}" for task in TASKS))
loaded = {}
for name, folder in models.items():
    loaded[name] = model, tokenizer = load_causal_lm(str(folder), device="cpu", dtype="float32")
    scores = [answer_accuracy(model, tokenizer, [q["prompt"] for q in questions[task]],
                              [q["answer"] for q in questions[task]]) for task in TASKS]
    print(f"{name:10}" + "".join(f"{s:>10.0%}" for s in scores))

# %% [markdown]
# At this budget SFT does the heavy lifting. DPO and RL move their own objectives (the preference accuracy and
# margin above, the mean reward) while the exact-match accuracy stays about where SFT left it: on these one-line
# answers there is little for them to choose between. `make chain` (the table under "The whole chain" in the
# README) runs the same stages on worked reasoning problems from the pretrained quickstart model, where RLHF with
# a verified reward raises held-out exact match by more than 10 points.
#
# ## What the models answer
#
# One held-out question per task through each model's chat template (`openllm generate --chat` does the same).

# %%
examples = [questions[task][0] for task in TASKS]
for name, (model, tokenizer) in loaded.items():
    answers = [generate(model, tokenizer, e["prompt"][-1]["content"], chat=True, greedy=True, max_new_tokens=8)
               for e in examples]
    print(f"{name:10}", " | ".join(repr(a) for a in answers))
print(f"{'expected':10}", " | ".join(repr(e["answer"]) for e in examples))
print(f"{'questions':10}", " | ".join(repr(e["prompt"][-1]["content"]) for e in examples))
'''

NOTEBOOKS["5_calibration.ipynb"] = '''
# %% [markdown]
# # 5 · Calibration
#
# When a model says a token has probability 0.8, is it right 80% of the time? A model whose confidence matches its
# accuracy is *calibrated*. This notebook measures that for the top-1 next-token prediction of a small pretrained
# model, with the same functions `openllm eval` uses (`openllm.evaluation.perplexity`), and colours text by
# how confident the model was about each token (`openllm.viz.confidence`).
''' + SETUP + RUN_RECIPE + PRETRAIN_DENSE + '''
# %% [markdown]
# ## A model to measure
#
# The short pretraining run of notebook 3 (reused when it is already there).

# %%
summary = pretrain_dense()
results = json.loads((DENSE / "eval_results.json").read_text())
m = results["metrics"]
print(f"held-out: {results['dataset']['tokens']:,} tokens · accuracy {m['accuracy']:.3f} · ECE {m['ece']:.4f} · "
      f"Brier {m['brier']:.4f}")

# %% [markdown]
# ## Reliability diagrams
#
# Predictions are grouped into 15 bins by confidence; each bar is the accuracy within a bin, and the diagonal is
# perfect calibration. The expected calibration error (ECE) is the token-weighted mean gap between bar and
# diagonal. `eval_results.json` already holds the bins the recipe measured; next to them, the same measurement of
# the untrained model (the same architecture with its initial random weights), made here with `evaluate_model`.

# %%
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from openllm.data.corpus import BUILTIN_CORPUS, load_corpus
from openllm.evaluation.generation import load_causal_lm
from openllm.evaluation.perplexity import evaluate_model, plot_reliability_diagram

held_out = list(load_corpus(BUILTIN_CORPUS, eval_fraction=0.02).eval["text"])
model, tokenizer = load_causal_lm(str(DENSE), device="cpu", dtype="float32")
torch.manual_seed(0)
untrained = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(DENSE, trust_remote_code=True),
                                             trust_remote_code=True).eval()
untrained_results = evaluate_model(untrained, tokenizer, held_out, block_size=128, num_samples=0)
print(f"untrained: accuracy {untrained_results['metrics']['accuracy']:.3f} · "
      f"ECE {untrained_results['metrics']['ece']:.4f}")

plot_reliability_diagram(untrained_results["calibration"]["bins"], RUNS / "reliability_untrained.png",
                         title="Untrained")
plot_reliability_diagram(results["calibration"]["bins"], RUNS / "reliability_trained.png",
                         title=f"After {summary['training_args']['max_steps']} steps")

fig, axes = plt.subplots(1, 2, figsize=(10, 6))
for ax, name in zip(axes, ("untrained", "trained")):
    ax.imshow(plt.imread(RUNS / f"reliability_{name}.png"))
    ax.axis("off")
fig.tight_layout()
fig.savefig(IMAGES / "reliability.png", dpi=70)
plt.show()

# %% [markdown]
# The untrained model spreads its probability almost evenly over the vocabulary, so every prediction lands in the
# lowest-confidence bin, where it is (rightly) almost never correct: a low ECE that says nothing useful. After
# training, confidence spreads over the whole range and, bin by bin, accuracy follows it; the bins above 0.6 hold
# few tokens, so their bars are noisy.
#
# The same numbers from the per-token probabilities that `openllm.viz.confidence` computes, on a few documents,
# with `expected_calibration_error` and `reliability_bins`:

# %%
from openllm.evaluation.perplexity import expected_calibration_error, reliability_bins
from openllm.viz.confidence import token_confidences

confidence, correct = [], []
for text in held_out[:40]:
    conf = token_confidences(model, tokenizer, text[:400])
    confidence += conf.predicted_probabilities
    correct += [p == t for p, t in zip(conf.predicted_ids, conf.token_ids)]
print(f"{len(correct):,} tokens · accuracy {sum(correct) / len(correct):.3f} · "
      f"ECE {expected_calibration_error(confidence, correct):.4f}")
for b in reliability_bins(confidence, correct, num_bins=5):
    if b["count"]:
        print(f"  confidence {b['lower']:.1f}-{b['upper']:.1f}: {b['count']:5} tokens, "
              f"mean confidence {b['confidence']:.2f}, accuracy {b['accuracy']:.2f}")

# %% [markdown]
# ## Every token coloured by its probability
#
# Red: the model found the token unlikely given the text before it; green: it expected it. Hover a token in the
# HTML for its probability and the model's own top guess. A model this small is unsure of most tokens; where it is
# sure is mostly structure: the blank line after a docstring's first line, the dots and underscores inside names.

# %%
from IPython.display import HTML, display

from openllm.viz.confidence import plot_confidence, render_html

text = next(t for t in held_out if len(t) > 400)[:500]
conf = token_confidences(model, tokenizer, text)
page = render_html(conf, path=RUNS / "confidence.html", title="Held-out docstring")
display(HTML(page[page.index("<p class"):page.index("</body>")]))
fig = plot_confidence(conf, line_width=80)
fig.savefig(IMAGES / "confidence.png", dpi=80, bbox_inches="tight")
plt.show()
'''


def parse(source: str) -> list:
    """Percent-format text → notebook cells."""
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell("\n".join(line.removeprefix("# ").removeprefix("#")
                                                                   for line in text.splitlines())))
        elif kind == "code" and text:
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.strip("\n").splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(name: str) -> "nbformat.NotebookNode":
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}
    notebook.cells = parse(NOTEBOOKS[name])
    for i, cell in enumerate(notebook.cells):
        cell.id = f"{Path(name).stem.split('_')[0]}-{i:02d}"  # stable ids: rebuilding changes nothing
    return notebook


def main(argv=None) -> int:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(f"wrote notebooks/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
