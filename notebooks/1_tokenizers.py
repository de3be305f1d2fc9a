# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1 · Tokenizers
#
# A language model reads integers, not text. A tokenizer decides which pieces of text become which integers, and
# that choice sets how long every sequence is, what the model can spell, and what it never sees.
#
# This notebook trains the three kinds OpenLLM offers (`openllm.data.tokenizer.train_tokenizer`, the function behind
# `openllm tokenizer`) on the same corpus and compares them:
#
# - **byte-level BPE**: starts from the 256 bytes and greedily merges the most frequent adjacent pair;
# - **Unigram**: starts from many candidate pieces and prunes the ones that least help a unigram language model;
# - **characters**: one token per character.
#
# The corpus is `builtin:python-docs`: the docstrings of Python's standard library, read from this machine's
# Python, so nothing is downloaded.

# %%
import json
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

# everything is built in, so nothing needs the network
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
RUNS = Path("outputs/notebooks")  # under the folder the notebook runs in, shared by the five notebooks
IMAGES = RUNS / "images"
IMAGES.mkdir(parents=True, exist_ok=True)
warnings.filterwarnings("ignore", message="IProgress not found")  # progress bars are off anyway

# %%
from openllm.data.corpus import BUILTIN_CORPUS, load_corpus

corpus = load_corpus(BUILTIN_CORPUS, eval_fraction=0.02)
train_texts, held_out = list(corpus.train["text"]), list(corpus.eval["text"])
print(f"{len(train_texts):,} training documents, {len(held_out):,} held out, "
      f"{corpus.stats['characters']:,} characters")
print("---\n" + held_out[3][:400])

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
show = lambda pair: " + ".join(repr(p.replace("Ġ", " ").replace("Ċ", "\n")) for p in pair)  # noqa: E731
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
probe = "naïve café → 東京 🙂\n\tindented"
for kind, tok in tokenizers.items():
    back = tok.decode(tok(probe, add_special_tokens=False)["input_ids"])
    same = sum(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in held_out)
    print(f"{kind:8} held-out documents restored exactly: {same}/{len(held_out)}   probe -> {back!r}")
