# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5 · Calibration
#
# When a model says a token has probability 0.8, is it right 80% of the time? A model whose confidence matches its
# accuracy is *calibrated*. This notebook measures that for the top-1 next-token prediction of a small pretrained
# model with `openllm eval`, computes the same numbers by hand from per-token probabilities, and colours text by
# how confident the model was about each token (`openllm.viz.confidence`).

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
# diagonal. The pretraining run already drew its diagram (`reliability.png`, next to `eval_results.json`); next
# to it, the same measurement of the untrained model (the same architecture with its initial random weights), made
# with `openllm eval` on the same held-out documents.

# %%
import torch
from transformers import AutoModelForCausalLM

from openllm.data.corpus import BUILTIN_CORPUS, load_corpus
from openllm.models.loading import load_causal_lm

held_out = list(load_corpus(BUILTIN_CORPUS, eval_fraction=0.02).eval["text"])
model, tokenizer = load_causal_lm(str(DENSE), device="cpu", dtype="float32")
UNTRAINED = RUNS / "untrained"
if not (UNTRAINED / "eval_results.json").is_file():
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(model.config).save_pretrained(UNTRAINED)
    tokenizer.save_pretrained(UNTRAINED)
    documents = RUNS / "held_out.jsonl"
    scored = held_out[:results["dataset"]["documents"]]  # the documents the pretraining run scored
    documents.write_text("".join(json.dumps({"text": text}) + "\n" for text in scored))
    run("openllm", "eval", UNTRAINED, "--dataset", documents, "--block-size", 128, "--num-samples", 0,
        "--device", "cpu", "--dtype", "float32", "--output-dir", UNTRAINED)
untrained = json.loads((UNTRAINED / "eval_results.json").read_text())
print(f"untrained: accuracy {untrained['metrics']['accuracy']:.3f} · ECE {untrained['metrics']['ece']:.4f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 6))
titles = {UNTRAINED: "Untrained", DENSE: f"After {summary['training_args']['max_steps']} steps"}
for ax, (folder, title) in zip(axes, titles.items()):
    ax.imshow(plt.imread(folder / "reliability.png"))
    ax.set_title(title)
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
# The same numbers by hand, from the per-token probabilities that `openllm.viz.confidence` computes on a few
# documents: bin the top-1 confidences, compare each bin's mean confidence with its accuracy, and weight the gaps by
# the share of tokens in the bin.

# %%
from openllm.viz.confidence import token_confidences

confidence, correct = [], []
for text in held_out[:40]:
    conf = token_confidences(model, tokenizer, text[:400])
    confidence += conf.predicted_probabilities
    correct += [p == t for p, t in zip(conf.predicted_ids, conf.token_ids)]
confidence, correct = torch.tensor(confidence), torch.tensor(correct, dtype=torch.float)


def reliability(num_bins):
    """(lower, upper, tokens, mean confidence, accuracy) of each non-empty equal-width bin (lower, upper]."""
    which = ((confidence * num_bins).ceil().long() - 1).clamp(0, num_bins - 1)
    rows = []
    for b in range(num_bins):
        inside = which == b
        if inside.any():
            rows.append((b / num_bins, (b + 1) / num_bins, int(inside.sum()), float(confidence[inside].mean()),
                         float(correct[inside].mean())))
    return rows


ece = sum(n / len(correct) * abs(accuracy - mean) for _, _, n, mean, accuracy in reliability(15))
print(f"{len(correct):,} tokens · accuracy {float(correct.mean()):.3f} · ECE {ece:.4f}")
for lower, upper, n, mean, accuracy in reliability(5):
    print(f"  confidence {lower:.1f}-{upper:.1f}: {n:5} tokens, mean confidence {mean:.2f}, accuracy {accuracy:.2f}")

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
