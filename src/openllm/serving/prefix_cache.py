"""Prefix caching: the keys and values of recent prompts, found again by any block-aligned prefix of a new prompt, so
that requests sharing a system prompt or a chat history prefill only what is new.

Each stored prompt is one entry (one copy of its keys and values per layer); an index maps the hash chain of every
whole block of its tokens to the entry, so a lookup walks the new prompt's blocks and takes the longest run found.
The tokens are compared on a hit, so a hash collision cannot serve another prompt's cache. Entries are evicted least
recently used first once they hold more than `max_bytes`.
"""

import collections
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class _Entry:
    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (1, kv_heads, tokens, head_dim)
    values: list[torch.Tensor]
    hashes: list[int]  # the index keys that may point here
    nbytes: int


class PrefixCache:
    def __init__(self, max_bytes: int, block_size: int = 16):
        self.max_bytes, self.block_size = max_bytes, block_size
        self.entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # least recently used first
        self.index: dict[int, tuple[int, int]] = {}  # block-chain hash -> (entry id, tokens covered)
        self.nbytes = 0
        self._next_id = 0
        self.hits = self.lookups = 0

    def _chain(self, ids: list[int], blocks: int) -> list[int]:
        hashes, h = [], 0
        for b in range(blocks):
            h = hash((h, tuple(ids[b * self.block_size:(b + 1) * self.block_size])))
            hashes.append(h)
        return hashes

    def lookup(self, ids: list[int]) -> Optional[tuple[int, list[torch.Tensor], list[torch.Tensor]]]:
        """(tokens covered, keys, values) of the longest cached block-aligned prefix of `ids`, leaving at least one
        token to prefill (its logits choose the first new token); None when no block is cached."""
        self.lookups += 1
        found = None
        for h in self._chain(ids, (len(ids) - 1) // self.block_size):
            hit = self.index.get(h)
            if hit is None:
                break
            found = hit
        if found is None:
            return None
        entry_id, length = found
        entry = self.entries[entry_id]
        if entry.ids[:length] != ids[:length]:  # a hash collision
            return None
        self.entries.move_to_end(entry_id)
        self.hits += 1
        return length, [k[:, :, :length] for k in entry.keys], [v[:, :, :length] for v in entry.values]

    def store(self, ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the whole blocks of a prompt whose keys and values (one row, unpadded) were just computed."""
        blocks = len(ids) // self.block_size
        if blocks == 0 or self.max_bytes <= 0:
            return
        length = blocks * self.block_size
        hashes = self._chain(ids, blocks)
        if self.index.get(hashes[-1], (None, 0))[1] == length:  # already cached in full
            self.entries.move_to_end(self.index[hashes[-1]][0])
            return
        keys = [k[:, :, :length].clone() for k in keys]
        values = [v[:, :, :length].clone() for v in values]
        nbytes = sum(t.numel() * t.element_size() for t in keys + values)
        if nbytes > self.max_bytes:
            return
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.entries[entry_id] = _Entry(list(ids[:length]), keys, values, hashes, nbytes)
        for b, h in enumerate(hashes):
            self.index[h] = (entry_id, (b + 1) * self.block_size)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        entry_id, entry = self.entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for h in entry.hashes:
            if self.index.get(h, (None,))[0] == entry_id:
                del self.index[h]
