"""Training straight from a stream (`streaming: true`), for corpora too big to prepare: documents are read as they
come (a Hub dataset or local parquet/jsonl files), cleaned, tokenized and packed into blocks on the fly by a
background thread (the tokenizer releases the GIL), each rank reading its own part of the stream.

    stream = StreamingDataset(sources, tokenizer, block_size=1024, rank=0, world_size=1)
    held_out = stream.eval_rows                    # the first `eval_tokens` tokens of documents, never trained on
    state = stream.state_dict(rows=4096)           # where the 4,096th row delivered ended: exact, no re-reading
    stream.load_state_dict(state)                  # the next row is the 4,097th

A position is the stream's own resumable state (`datasets`' `IterableDataset.state_dict()`) taken before the
document a row ends in, plus the tokens of that document already used: resuming re-reads and re-tokenizes only that
one document. The stream repeats when it ends (the `epoch` is part of the position), so training runs until
`max_steps`.
"""

from __future__ import annotations

import copy
import hashlib
import queue
import threading
from typing import Iterator, Optional

import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .corpus import load_documents, normalize_whitespace

_END = object()


class StreamingDataset(torch.utils.data.IterableDataset):
    """Rows of `block_size` tokens (documents, each followed by EOS, end to end) from this rank's part of a stream.

    `sources` are `(id, config, splits, text_column)` tuples read one after another. The held-out split is the
    stream's first documents up to `eval_tokens` tokens (read once, before the split by rank); training skips them
    by content hash wherever they occur. `snapshots` positions are kept, enough for the rows a data loader reads
    ahead."""

    def __init__(self, sources: list[tuple], tokenizer, block_size: int, *, rank: int = 0, world_size: int = 1,
                 min_chars: int = 32, sample_by: str = "paragraph", eval_tokens: int = 0, batch_documents: int = 256,
                 snapshots: int = 4096):
        if tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token, which separates documents in the token stream.")
        self.sources, self.block_size, self.rank, self.world_size = sources, block_size, rank, world_size
        self.min_chars, self.sample_by, self.batch_documents = min_chars, sample_by, batch_documents
        self.backend, self.eos = tokenizer.backend_tokenizer, tokenizer.eos_token_id
        self.max_snapshots = snapshots
        self.position = {"epoch": 0, "source": 0, "stream": None, "skip_tokens": 0}  # where the next row starts
        self.rows_delivered = 0
        self._snapshots: dict[int, dict] = {}
        self.eval_rows, self.eval_texts, self._held_out = self._read_eval(eval_tokens)

    # -- the stream -----------------------------------------------------------------------------------------------

    def _read(self, source: int):
        """The source as a stream of documents, whole (before the split by rank)."""
        name, config, splits, text_column = self.sources[source]
        return load_documents(name, text_column, config_name=config, splits=splits, sample_by=self.sample_by,
                              streaming=True)

    def _stream(self, source: int):
        ds = self._read(source)
        return split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size) if self.world_size > 1 else ds

    def _clean(self, text: Optional[str]) -> Optional[str]:
        text = normalize_whitespace(text or "")
        return text if len(text) >= self.min_chars else None

    def _read_eval(self, eval_tokens: int):
        if eval_tokens <= 0:
            self.eval_tokens = self.eval_bytes = 0
            return [], [], set()
        ds = self._read(0)
        texts, tokens = [], []
        for example in ds:
            text = self._clean(example["text"])
            if text is None:
                continue
            texts.append(text)
            tokens.extend(self.backend.encode(text, add_special_tokens=False).ids + [self.eos])
            if len(tokens) >= eval_tokens:
                break
        self.eval_tokens, self.eval_bytes = len(tokens), sum(len(t.encode("utf-8")) for t in texts)
        n = len(tokens) // self.block_size
        rows = [torch.tensor(tokens[i * self.block_size: (i + 1) * self.block_size]) for i in range(n)]
        return rows, texts, {_digest(t) for t in texts}

    def _documents(self, position: dict) -> Iterator[tuple[dict, list[int]]]:
        """(position before the document, its tokens + EOS) from `position` on, forever, tokenized in batches."""
        epoch, source, state = position["epoch"], position["source"], position["stream"]
        while True:
            ds = self._stream(source)
            if state is not None:
                ds.load_state_dict(state)
            pending: list[tuple[dict, str]] = []
            before = ds.state_dict()
            for example in ds:
                text = self._clean(example["text"])
                if text is not None and _digest(text) not in self._held_out:
                    pending.append(({"epoch": epoch, "source": source, "stream": before}, text))
                before = ds.state_dict()
                if len(pending) >= self.batch_documents:
                    yield from self._tokenized(pending)
                    pending = []
            yield from self._tokenized(pending)
            state = None
            source = (source + 1) % len(self.sources)
            epoch += source == 0

    def _tokenized(self, pending):
        encodings = self.backend.encode_batch([text for _, text in pending], add_special_tokens=False)
        for (position, _), encoding in zip(pending, encodings):
            yield position, encoding.ids + [self.eos]

    def _rows(self, position: dict) -> Iterator[tuple[np.ndarray, dict]]:
        """(row, position after it): the packer, started at `position`."""
        buffer: list[int] = []
        skip = position["skip_tokens"]
        for doc_position, tokens in self._documents(position):
            offset, skip = skip, 0  # the first document: its tokens that rows before `position` took
            while offset < len(tokens):
                take = min(self.block_size - len(buffer), len(tokens) - offset)
                buffer.extend(tokens[offset: offset + take])
                offset += take
                if len(buffer) == self.block_size:
                    yield np.array(buffer, np.int64), {**doc_position, "skip_tokens": offset}
                    buffer = []

    def __iter__(self):
        rows: queue.Queue = queue.Queue(maxsize=64)
        stop = threading.Event()
        position = copy.deepcopy(self.position)

        def produce():
            try:
                for item in self._rows(position):
                    while not stop.is_set():
                        try:
                            rows.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as error:  # surfaced in the training loop, not lost in a thread
                rows.put(error)
            rows.put(_END)

        worker = threading.Thread(target=produce, name="openllm-stream", daemon=True)
        worker.start()
        try:
            while True:
                item = rows.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                row, after = item
                self.rows_delivered += 1
                self._snapshots[self.rows_delivered] = after
                self._snapshots.pop(self.rows_delivered - self.max_snapshots, None)
                yield {"input_ids": torch.from_numpy(row)}
        finally:
            stop.set()

    # -- positions ------------------------------------------------------------------------------------------------

    def state_dict(self, rows: int) -> dict:
        """The position after the `rows`-th row this dataset delivered (rows the trainer consumed, not those a data
        loader read ahead)."""
        if rows == 0:
            return copy.deepcopy(self.position) | {"rows": 0}
        if rows not in self._snapshots:
            raise RuntimeError(f"The stream's position after row {rows} is no longer kept (rows delivered: "
                               f"{self.rows_delivered}, positions kept: {self.max_snapshots}).")
        return copy.deepcopy(self._snapshots[rows]) | {"rows": rows}

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration where `state` (from `state_dict`) was taken."""
        self.position = {k: copy.deepcopy(state[k]) for k in ("epoch", "source", "stream", "skip_tokens")}
        self.rows_delivered = state.get("rows", 0)
        self._snapshots = {}


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


__all__ = ["StreamingDataset"]
