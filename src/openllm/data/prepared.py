"""Reading a folder that `openllm prepare` wrote: memory-mapped token shards, so training starts at once whatever the
corpus size.

    train = PreparedDataset("prepared/my-corpus", "train", seed=42)   # rows of block_size tokens
    check_compatible(train.manifest, tokenizer, block_size=1024)       # refuses another tokenizer or block size

Layout: `manifest.json` (written last), `tokenizer/`, `train/SS-KKKKK.bin` (source SS, shard KKKKK: the kept
documents' tokens end to end, uint16 or uint32), with `.rows.npy`/`.segments.npy` for best-fit packing, and
`eval/` (`tokens.bin`, `lengths.npy`, `documents.jsonl`).

Every rank opens the same dataset; the sampler (accelerate's, under the Trainer) hands each rank its own rows. A row's
content depends only on its index, and the mixture's index only on the seed, so the global order of rows does not
depend on the number of processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

FORMAT = "openllm-prepared-v1"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
EVAL_TEXTS = "documents.jsonl"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(path) -> bool:
    """Whether `path` is a folder that `openllm prepare` wrote or began (finished or not)."""
    path = Path(str(path))
    return path.is_dir() and ((path / MANIFEST).exists() or (path / ".work" / "settings.json").exists())


def read_manifest(folder) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        if (folder / ".work").exists():
            raise ValueError(f"{folder} was not finished: rerun the `openllm prepare` command that began it, which "
                             "continues where it stopped.")
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: it is not a folder that `openllm prepare` wrote.")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder}/{MANIFEST} is in format {manifest.get('format')!r}; this version of openllm "
                         f"reads {FORMAT!r}. Prepare the data again.")
    return manifest


def check_compatible(manifest: dict, tokenizer, block_size: int, folder: str = "the prepared data") -> None:
    """Refuse to train on shards made with another tokenizer or block size, saying which and what to do."""
    from .tokenizer import tokenizer_hash

    settings = manifest["settings"]
    if settings["block_size"] != block_size:
        raise ValueError(f"{folder} was prepared with block_size {settings['block_size']}, but this run asks for "
                         f"{block_size}. Use block_size: {settings['block_size']}, or prepare the data again with "
                         f"--block_size {block_size} into another folder.")
    expected = settings["tokenizer"]
    if tokenizer_hash(tokenizer) != expected["hash"]:
        raise ValueError(f"{folder} was tokenized by another tokenizer ({expected['name_or_path']}, hash "
                         f"{expected['hash']}; this run's hashes to {tokenizer_hash(tokenizer)}). Train with the "
                         f"tokenizer the data was prepared with (the folder's own copy is {folder}/{TOKENIZER_DIR}), "
                         "or prepare the data again with this one.")


class PreparedDataset(torch.utils.data.Dataset):
    """The training rows (`split="train"`) or held-out rows (`"eval"`) of a prepared folder, as
    `{"input_ids": LongTensor[block_size]}`. Shards are memory-mapped when first read, in each process.

    A weighted mixture draws `round(share × rows)` rows from each source (cycling through a seeded permutation of a
    source that has too few), so the realised proportions (`mixture()`) follow the weights."""

    def __init__(self, folder, split: str = "train", seed: int = 0):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        settings = self.manifest["settings"]
        self.block_size, self.dtype = settings["block_size"], np.dtype(settings["dtype"])
        self.best_fit = split == "train" and settings["packing"] == "best_fit"
        if split == "eval":
            self.shards = [{"file": "eval/tokens", "rows": self.manifest["stats"]["eval_rows"], "source": 0}]
        else:
            self.shards = [s for s in self.manifest["train_shards"] if s["rows"]]
        self.first_row = np.concatenate([[0], np.cumsum([s["rows"] for s in self.shards])]).astype(np.int64)
        self.index = self._mixture_index(seed) if split == "train" else None
        self._open: dict[int, tuple] = {}

    def _mixture_index(self, seed: int) -> Optional[np.ndarray]:
        sources = self.manifest["sources"]
        rows = np.zeros(len(sources), np.int64)
        for shard in self.shards:
            rows[shard["source"]] += shard["rows"]
        weights = np.array([s["weight"] for s in sources], float)
        target = np.round(weights / weights.sum() * rows.sum()).astype(np.int64)
        if len(sources) == 1 or (target == rows).all():
            return None
        rng = np.random.default_rng(seed)
        # each source's rows are contiguous in the shard order (sources come one after another)
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        parts = []
        for start, n, want in zip(starts, rows, target):
            if n == 0:
                if want:
                    raise ValueError("A source of the mixture has no rows of this block size.")
                continue
            picks = np.concatenate([rng.permutation(n) for _ in range(-(-want // n))])[:want]
            parts.append(start + np.sort(picks))
        return np.concatenate(parts)

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else int(self.first_row[-1])

    def mixture(self) -> dict:
        """{source id: the share of training rows it supplies}."""
        sources = self.manifest["sources"]
        per_row = np.repeat([s["source"] for s in self.shards], [s["rows"] for s in self.shards])
        drawn = per_row[self.index] if self.index is not None else per_row
        counts = np.bincount(drawn, minlength=len(sources))
        return {s["id"]: round(float(c) / max(len(drawn), 1), 6) for s, c in zip(sources, counts)}

    def _shard(self, k: int):
        if k not in self._open:
            stem = self.folder / self.shards[k]["file"]
            tokens = np.memmap(f"{stem}.bin", self.dtype, mode="r")
            index = (np.load(f"{stem}.rows.npy", mmap_mode="r"), np.load(f"{stem}.segments.npy", mmap_mode="r")) \
                if self.best_fit else None
            self._open[k] = (tokens, index)
        return self._open[k]

    def __getitem__(self, i: int) -> dict:
        row = int(self.index[i]) if self.index is not None else int(i)
        if not 0 <= row < self.first_row[-1]:
            raise IndexError(i)
        k = int(np.searchsorted(self.first_row, row, side="right")) - 1
        tokens, index = self._shard(k)
        r = row - int(self.first_row[k])
        if index is None:
            ids = tokens[r * self.block_size: (r + 1) * self.block_size]
        else:
            starts, segments = index
            ids = np.concatenate([tokens[a: a + n] for a, n in segments[starts[r]: starts[r + 1]]])
        return {"input_ids": torch.from_numpy(ids.astype(np.int64))}

    def eval_texts(self, limit: Optional[int] = None) -> list[str]:
        """The held-out documents' text, as the tokenizer reads them back."""
        texts = []
        with open(self.folder / "eval" / EVAL_TEXTS) as f:
            for line in f:
                if limit is not None and len(texts) >= limit:
                    break
                texts.append(json.loads(line)["text"])
        return texts


__all__ = ["FORMAT", "MANIFEST", "TOKENIZER_DIR", "PreparedDataset", "check_compatible", "is_prepared",
           "read_manifest", "token_dtype"]
