# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3 · Train and sample
#
# One short pretraining run, launched exactly as on the command line, then its loss curve and samples at several
# decoding settings side by side.
#
# The command is `openllm pretrain --config pretrain_quickstart.yaml`: the quickstart recipe that ships with the
# package (built-in corpus, a byte-level BPE tokenizer trained on the fly, a 1.3M-parameter model). Flags override
# the YAML; here they make the run about half a minute on two CPU cores. Everything the run produced is in its
# output folder: the model, the tokenizer, `training_summary.json` (the log history) and `eval_results.json`
# (held-out metrics and sample generations).

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


# %%
DENSE = RUNS / "dense"
PRETRAIN_FLAGS = ["--vocab_size", 2048, "--block_size", 128, "--per_device_train_batch_size", 16,
                  "--max_steps", 150, "--learning_rate", 2e-3, "--warmup_steps", 15, "--logging_steps", 5,
                  "--eval_steps", 50, "--save_steps", 1000, "--final_eval_documents", 149, "--disable_tqdm", "true"]


def pretrain_dense():
    """The quickstart recipe, shorter; a finished run is reused."""
    if not (DENSE / "eval_results.json").is_file():
        run("openllm", "pretrain", "--config", "pretrain_quickstart.yaml", *PRETRAIN_FLAGS, "--output_dir", DENSE)
    return json.loads((DENSE / "training_summary.json").read_text())


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
# Each is an argument of transformers' `model.generate` (`openllm generate` exposes the same settings as flags).

# %%
import html

import torch
from IPython.display import HTML, display
from transformers import set_seed

from openllm.models.loading import load_causal_lm

model, tokenizer = load_causal_lm(str(DENSE), device="cpu", dtype="float32")
settings = {
    "greedy": dict(do_sample=False),
    "T 0.7, top-k 40": dict(do_sample=True, temperature=0.7, top_k=40, top_p=1.0),
    "T 1.0, top-p 0.9": dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9),
    "T 1.5, no cut-off": dict(do_sample=True, temperature=1.5, top_k=0, top_p=1.0),
}


def complete(prompt, **decoding):
    inputs = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
    set_seed(0)  # the same random draws for every setting
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=24, pad_token_id=tokenizer.pad_token_id, **decoding)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


prompts = ["json.dumps Serialize", "Return the number of", "os.path.join"]
rows = []
for prompt in prompts:
    cells = [complete(prompt, **decoding) for decoding in settings.values()]
    rows.append("<tr><th>" + html.escape(prompt) + "</th>"
                + "".join(f"<td><pre>{html.escape(c)}</pre></td>" for c in cells) + "</tr>")
display(HTML("<table><tr><th>prompt</th>" + "".join(f"<th>{s}</th>" for s in settings) + "</tr>"
             + "".join(rows) + "</table>"))

# %% [markdown]
# What the settings do to the next-token distribution after one prompt: the same logits, divided by three
# temperatures.

# %%
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
