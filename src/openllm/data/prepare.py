"""`openllm prepare`: tokenize a corpus once into memory-mappable token shards plus a manifest, then train many times.

    openllm prepare --dataset_name data/**/*.jsonl --text_column text --tokenizer_name_or_path tok \
        --block_size 1024 --output_dir prepared/my-corpus
    openllm prepare --config recipes/pretrain_medium.yaml     # output_dir: the recipe's prepared_data_dir

Four resumable phases, each committed atomically, so a kill at any instant loses at most the shards in flight:

1. **Tokenize** (all cores): the source is read in order and cut into shards of about `shard_bytes` of text; worker
   processes clean (`normalize_whitespace`, `min_chars`), hash (BLAKE2b-128) and tokenize each shard (document
   tokens, then EOS) into `.work/`. A finished shard is never redone.
2. **Split and deduplicate** in hash ranges sized to a fixed memory budget: in each range the shards' sorted
   hashes are merged; the first occurrence of a document is kept, later ones are dropped, and the documents with
   the smallest hashes are held out until `eval_tokens` tokens (the same split for any file order or process count).
3. **Pack** (all cores): each shard's kept documents are written to `train/` with their row index (`concat` or
   `best_fit` packing); the held-out documents to `eval/`, with their text.
4. **Manifest** (`manifest.json`, written last): tokenizer and its hash, block size, packing, counts, sources and
   their fingerprints. Its presence means the folder is complete; `openllm.data.prepared` reads it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from .. import atomic
from ..versions import __version__
from .arguments import DataArguments
from .corpus import BUILTIN_CORPUS, _expand_files, _looks_local, load_documents, normalize_whitespace
from .packing import best_fit_rows
from .prepared import EVAL_TEXTS, FORMAT, MANIFEST, TOKENIZER_DIR, read_manifest, token_dtype

logger = logging.getLogger(__name__)

WORK = ".work"
# hash records: 128-bit document hash, then where the document is
HASH_RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("doc", "<u4")])
LABEL_TRAIN, LABEL_EVAL, LABEL_DUPLICATE = 0, 1, 2


@dataclass
class PrepareArguments:
    """Where the shards go and how the work is cut up (the data itself is described by `DataArguments`)."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder for the shards and manifest (default: prepared_data_dir)."})
    shard_bytes: int = field(
        default=32 << 20, metadata={"help": "Characters of text per shard: the unit of parallel work and resuming."})
    memory_budget: int = field(
        default=256 << 20, metadata={"help": "Bytes of document hashes held at once while deduplicating."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Remove a prepared folder (finished or not) prepared with other settings."})


@dataclass
class Source:
    """One source of a (possibly weighted) mixture."""

    id: str
    weight: float = 1.0
    config: Optional[str] = None
    split: Optional[str | list[str]] = None
    text_column: str = "text"

    @property
    def splits(self) -> Optional[list[str]]:
        return [self.split] if isinstance(self.split, str) else self.split


def sources_of(args: DataArguments) -> list[Source]:
    """The sources the arguments name: `dataset_mixture` when given, else `dataset_name` with weight 1."""
    if not args.dataset_mixture:
        return [Source(args.dataset_name, 1.0, args.dataset_config, args.dataset_splits, args.text_column)]
    sources = []
    for entry in args.dataset_mixture:
        unknown = set(entry) - {"id", "weight", "config", "split", "text_column"}
        if "id" not in entry or unknown:
            raise ValueError(f"Each dataset_mixture entry needs `id` and may have weight, config, split, text_column; "
                             f"got {entry}.")
        source = Source(**{"text_column": args.text_column, **entry})
        if not source.weight > 0:
            raise ValueError(f"Mixture weights must be positive; {source.id!r} has {source.weight}.")
        sources.append(source)
    return sources


def fingerprint(source: Source) -> str:
    """What identifies the source's content: each local file's path, size and modification time; for a Hub
    dataset, its id, configuration and splits (a new revision under the same name is not detected)."""
    if source.id != BUILTIN_CORPUS and _looks_local(source.id):
        stats = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in _expand_files(source.id)]
        text = json.dumps(stats)
    else:
        text = json.dumps([source.id, source.config, source.splits, sys.version_info[:2]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Phase 1: read, clean, hash, tokenize


def _text_batches(source: Source, args: DataArguments, batch_size: int = 1000) -> Iterator[list[str]]:
    """The source's documents in a fixed order, in batches. Local files are read as a stream (no Arrow copy on
    disk); a Hub dataset is streamed when `streaming` is set, else downloaded and cached by `datasets`."""
    streaming = args.streaming or (source.id != BUILTIN_CORPUS and _looks_local(source.id))
    ds = load_documents(source.id, source.text_column, config_name=source.config, splits=source.splits,
                        sample_by=args.sample_by, streaming=streaming)
    n = 0
    for batch in ds.iter(batch_size=batch_size):
        texts = batch["text"]
        if args.max_documents is not None:
            texts = texts[: args.max_documents - n]
        n += len(texts)
        if texts:
            yield texts
        if args.max_documents is not None and n >= args.max_documents:
            return


def _chunks(batches: Iterator[list[str]], shard_bytes: int) -> Iterator[list[str]]:
    chunk, size = [], 0
    for texts in batches:
        for text in texts:
            chunk.append(text)
            size += len(text) if text else 0
            if size >= shard_bytes:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


_WORKER: dict = {}


def _init_worker(tokenizer_file: str, eos: int, dtype: str, min_chars: int) -> None:
    from tokenizers import Tokenizer

    # one process per core; the tokenizer's own threads would compete with the other workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer = Tokenizer.from_file(tokenizer_file)
    # the ids only: `encode_batch_fast` (tokenizers >= 0.20) skips the character offsets, about a third of the work
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    _WORKER.update(encode=encode, eos=eos, dtype=np.dtype(dtype), min_chars=min_chars)


def _tokenize_shard(folder: str, texts: list[str]) -> dict:
    """Clean, hash and tokenize one shard's documents into `folder` (committed by renaming a finished temporary)."""
    eos, min_chars = _WORKER["eos"], _WORKER["min_chars"]
    cleaned = [normalize_whitespace(t or "") for t in texts]
    kept = [t for t in cleaned if len(t) >= min_chars]
    encoded_text = [t.encode("utf-8") for t in kept]
    digests = b"".join(hashlib.blake2b(b, digest_size=16).digest() for b in encoded_text)
    lengths, tokens = [], []
    for a in range(0, len(kept), 256):  # a tokenizer `Encoding` weighs far more than its ids: a few at a time
        encodings = _WORKER["encode"](kept[a: a + 256], add_special_tokens=False)
        n = np.fromiter((len(e.ids) + 1 for e in encodings), np.int64, len(encodings))
        lengths.append(n)
        tokens.append(np.fromiter(itertools.chain.from_iterable((*e.ids, eos) for e in encodings),
                                  _WORKER["dtype"], int(n.sum())))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    tokens = np.concatenate(tokens) if tokens else np.zeros(0, _WORKER["dtype"])
    hashes = np.empty(len(kept), HASH_RECORD)
    pairs = np.frombuffer(digests, ">u8").reshape(-1, 2) if kept else np.empty((0, 2), ">u8")
    hashes["hi"], hashes["lo"], hashes["doc"] = pairs[:, 0], pairs[:, 1], np.arange(len(kept))
    hashes.sort(order=["hi", "lo", "doc"])
    meta = {"documents_in": len(texts), "dropped_short": len(texts) - len(kept), "documents": len(kept),
            "tokens": int(lengths.sum()), "characters": sum(map(len, kept)),
            "bytes": sum(map(len, encoded_text))}
    with atomic.folder(folder) as tmp:
        tokens.tofile(tmp / "tokens.bin")
        np.save(tmp / "lengths.npy", lengths)
        np.save(tmp / "bytes.npy", np.fromiter(map(len, encoded_text), np.int64, len(kept)))
        np.save(tmp / "hashes.npy", hashes)
        (tmp / "meta.json").write_text(json.dumps(meta))
    return meta


def _bounded(pool, fn, tasks: Iterator[tuple], in_flight: int) -> Iterator:
    """`pool.imap` that reads ahead at most `in_flight` tasks, so memory does not grow with a fast reader."""
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, task))
        if len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _unfinished(source: Source, args: DataArguments, folder: Path, shard_bytes: int, progress) -> Iterator[tuple]:
    """(shard folder, documents) for every shard of the source not finished before an interruption."""
    for k, chunk in enumerate(_chunks(_text_batches(source, args), shard_bytes)):
        shard = folder / f"{k:05d}"
        if (shard / "meta.json").exists():
            progress.update()
            continue
        yield str(shard), chunk


def tokenize_sources(sources, args: DataArguments, work: Path, pool, num_proc: int, shard_bytes: int) -> list[int]:
    """Phase 1 for every source; returns the number of shards of each. Finished shards are skipped."""
    counts = []
    for s, source in enumerate(sources):
        done_file = work / f"source-{s}.json"
        if done_file.exists():
            counts.append(json.loads(done_file.read_text())["shards"])
            continue
        folder = work / f"source-{s}"
        progress = tqdm(desc=f"Tokenizing {source.id}", unit="shard", dynamic_ncols=True)
        chunk_bytes = shard_bytes
        if source.id != BUILTIN_CORPUS and _looks_local(source.id):
            # a small corpus still makes enough shards to keep every core busy (at least 16, of 1 MB or more);
            # the size depends only on the files, so an interrupted preparation cuts the same shards again
            size = sum(os.path.getsize(f) for f in _expand_files(source.id))
            chunk_bytes = min(shard_bytes, max(1 << 20, size // 16))

        for meta in _bounded(pool, _tokenize_shard, _unfinished(source, args, folder, chunk_bytes, progress),
                             in_flight=num_proc + 2):
            progress.update()
            progress.set_postfix(tokens=f"{meta['tokens']:,}", refresh=False)
        progress.close()
        n = len(list(folder.glob("[0-9]*"))) if folder.exists() else 0
        if n == 0:
            raise ValueError(f"{source.id!r} contains no documents.")
        atomic.write_json(done_file, {"shards": n})
        counts.append(n)
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Phase 2: deduplicate and hold out, in hash ranges of bounded size


def split_and_deduplicate(shards: list[Path], eval_tokens: int, memory_budget: int) -> dict:
    """Label every document train, eval or duplicate (`labels.npy` in each shard folder).

    The hash space is cut into ranges holding about `memory_budget` bytes of hash records each; hashes are
    uniform, so ranges are even. Ranges are visited from the smallest hash up: in each, the records of every shard
    are merged and sorted, the first occurrence (source, shard, position order) of each hash is kept, and kept
    documents go to the held-out split, smallest hash first, until it has `eval_tokens` tokens.
    """
    total = sum(len(np.load(s / "hashes.npy", mmap_mode="r")) for s in shards)
    n_ranges = max(1, math.ceil(total * (HASH_RECORD.itemsize + 16) / memory_budget))
    bounds = [(2 ** 64 * i) // n_ranges for i in range(n_ranges + 1)]
    labels = {s: np.zeros(len(np.load(s / "hashes.npy", mmap_mode="r")), np.uint8) for s in shards} \
        if total * 1 <= memory_budget else None
    held_out = duplicates = 0
    for lo, hi in tqdm(list(zip(bounds[:-1], bounds[1:])), desc="Deduplicating", unit="range",
                       disable=n_ranges < 4):
        parts = []
        for i, shard in enumerate(shards):
            hashes = np.load(shard / "hashes.npy", mmap_mode="r")
            a, b = np.searchsorted(hashes["hi"], np.array([lo, min(hi, 2 ** 64 - 1)], np.uint64), side="left")
            if hi == 2 ** 64:
                b = len(hashes)
            if b > a:
                part = hashes[a:b]
                parts.append((np.full(b - a, i, np.uint32), np.asarray(part)))
        if not parts:
            continue
        shard_index = np.concatenate([p[0] for p in parts])
        records = np.concatenate([p[1] for p in parts])
        order = np.lexsort((records["doc"], shard_index, records["lo"], records["hi"]))
        records, shard_index = records[order], shard_index[order]
        first = np.ones(len(records), bool)
        first[1:] = (records["hi"][1:] != records["hi"][:-1]) | (records["lo"][1:] != records["lo"][:-1])
        label = np.where(first, LABEL_TRAIN, LABEL_DUPLICATE).astype(np.uint8)
        duplicates += int((~first).sum())
        if held_out < eval_tokens:
            for j in np.flatnonzero(first):
                if held_out >= eval_tokens:
                    break
                lengths = np.load(shards[shard_index[j]] / "lengths.npy", mmap_mode="r")
                held_out += int(lengths[records["doc"][j]])
                label[j] = LABEL_EVAL
        by_shard = np.argsort(shard_index, kind="stable")
        cuts = np.flatnonzero(np.diff(shard_index[by_shard])) + 1
        for group in np.split(by_shard, cuts):
            i, docs = shard_index[group[0]], records["doc"][group]
            if labels is not None:
                labels[shards[i]][docs] = label[group]
            else:
                path = shards[i] / "labels.u8"
                if not path.exists():
                    np.zeros(len(np.load(shards[i] / "hashes.npy", mmap_mode="r")), np.uint8).tofile(path)
                stored = np.memmap(path, np.uint8, mode="r+")
                stored[docs] = label[group]
                stored.flush()
                del stored
    for shard in shards:
        path = shard / "labels.u8"
        if labels is not None:
            labels[shard].tofile(path)
        elif not path.exists():  # no document of this shard fell in any range: impossible unless it is empty
            np.zeros(0, np.uint8).tofile(path)
    return {"duplicates": duplicates, "eval_tokens": held_out}


# ----------------------------------------------------------------------------------------------------------------
# Phase 3: pack


def _pack_shard(shard: str, out_stem: str, block_size: int, packing: str, dtype: str) -> dict:
    """Write one shard's training documents to `out_stem.bin` and its rows to `out_stem.rows.npy`."""
    shard = Path(shard)
    labels = np.fromfile(shard / "labels.u8", np.uint8)
    lengths = np.load(shard / "lengths.npy")
    tokens = np.memmap(shard / "tokens.bin", np.dtype(dtype), mode="r") if lengths.sum() else np.empty(0, dtype)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    keep = np.flatnonzero(labels == LABEL_TRAIN)
    kept_lengths = lengths[keep]
    out = Path(out_stem)
    stats = {"documents": len(keep), "tokens": int(kept_lengths.sum())}
    if packing == "concat":
        rows = stats["tokens"] // block_size
        stats.update(rows=rows, tokens_cropped=stats["tokens"] - rows * block_size, tokens_padded=0)
        index = None
    else:
        *index, rows_stats = best_fit_rows(kept_lengths, block_size)
        stats.update(rows_stats)
    tmp_bin = out.with_name(f".{out.name}.bin.tmp")
    with open(tmp_bin, "wb") as f:
        for a in range(0, len(keep), 4096):  # contiguous runs of kept documents, copied in slices
            idx = keep[a: a + 4096]
            pieces = [tokens[starts[i]: starts[i] + lengths[i]] for i in idx]
            if pieces:
                f.write(np.concatenate(pieces).astype(dtype, copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    if index is not None:
        atomic.write_bytes(out.with_name(out.name + ".rows.npy"), _npy_bytes(index[0]))
        atomic.write_bytes(out.with_name(out.name + ".segments.npy"), _npy_bytes(index[1]))
    os.replace(tmp_bin, out.with_name(out.name + ".bin"))  # the .bin last: its presence marks the shard done
    return stats


def _pack_shard_task(task: tuple) -> dict:
    return _pack_shard(*task)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_eval(shards: list[Path], folder: Path, dtype: str, tokenizer) -> dict:
    """Held-out documents in hash order, as tokens (`eval/tokens.bin`, `eval/lengths.npy`) and as the text the
    tokenizer reads back (`eval/documents.jsonl`), which bits per byte and the model card's samples need."""
    tokens, lengths, sizes = [], [], []
    for shard in shards:
        labels = np.fromfile(shard / "labels.u8", np.uint8)
        idx = np.flatnonzero(labels == LABEL_EVAL)
        if not len(idx):
            continue
        shard_lengths = np.load(shard / "lengths.npy")
        starts = np.concatenate([[0], np.cumsum(shard_lengths)[:-1]])
        data = np.memmap(shard / "tokens.bin", np.dtype(dtype), mode="r")
        shard_bytes = np.load(shard / "bytes.npy")
        for i in idx:
            tokens.append(np.array(data[starts[i]: starts[i] + shard_lengths[i]]))
            lengths.append(int(shard_lengths[i]))
            sizes.append(int(shard_bytes[i]))
    if not tokens:
        return {"documents": 0, "tokens": 0, "bytes": 0}
    with atomic.folder(folder) as tmp:
        np.concatenate(tokens).tofile(tmp / "tokens.bin")
        np.save(tmp / "lengths.npy", np.array(lengths, np.int64))
        with open(tmp / EVAL_TEXTS, "w") as f:
            for doc in tokens:
                f.write(json.dumps({"text": tokenizer.decode(doc[:-1].tolist())}) + "\n")
    return {"documents": len(tokens), "tokens": int(sum(lengths)), "bytes": int(sum(sizes))}


# ----------------------------------------------------------------------------------------------------------------
# The command


def settings_of(args: DataArguments, sources: list[Source], tokenizer, shard_bytes: int) -> dict:
    """Everything the shards depend on: a folder prepared with other settings is not reused."""
    from .tokenizer import tokenizer_hash

    return {"sources": [{**asdict(s), "fingerprint": fingerprint(s)} for s in sources],
            "tokenizer": {"name_or_path": args.tokenizer_name_or_path, "hash": tokenizer_hash(tokenizer),
                          "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id},
            "block_size": args.block_size, "packing": args.packing, "eval_tokens": args.eval_tokens,
            "min_chars": args.min_chars, "sample_by": args.sample_by, "max_documents": args.max_documents,
            "streaming": args.streaming, "dtype": token_dtype(len(tokenizer)).name, "shard_bytes": shard_bytes}



def prepare(args: DataArguments, options: PrepareArguments) -> dict:
    """Prepare `args`' corpus into `options.output_dir` and return the manifest. A finished folder prepared with the
    same settings is returned unchanged; an interrupted one continues where it stopped."""
    from ..models.loading import load_tokenizer
    from .tokenizer import save_tokenizer

    start = time.perf_counter()
    out = Path(options.output_dir or args.prepared_data_dir or "")
    if not str(out) or str(out) == ".":
        raise ValueError("Name the folder for the prepared data: --output_dir DIR (or prepared_data_dir in the YAML).")
    if not args.tokenizer_name_or_path:
        raise ValueError("openllm prepare needs a tokenizer: --tokenizer_name_or_path FOLDER_OR_HUB_ID (train one "
                         "with `openllm tokenizer train`).")
    tokenizer = load_tokenizer(args.tokenizer_name_or_path)
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token, which separates documents in the token stream.")
    sources = sources_of(args)
    settings = settings_of(args, sources, tokenizer, options.shard_bytes)
    settings_file = out / WORK / "settings.json"
    if (out / MANIFEST).exists() or settings_file.exists():
        previous = read_manifest(out)["settings"] if (out / MANIFEST).exists() else json.loads(
            settings_file.read_text())
        if previous != settings:
            if not options.overwrite_output_dir:
                changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
                raise ValueError(f"{out} holds data prepared with other settings ({', '.join(changed)} differ). "
                                 "Choose another --output_dir, or pass --overwrite_output_dir true to replace it.")
            shutil.rmtree(out)
        elif (out / MANIFEST).exists():
            logger.info("%s is already prepared with these settings; nothing to do.", out)
            shutil.rmtree(out / WORK, ignore_errors=True)  # left by a kill after the manifest was written
            return read_manifest(out)
    elif out.exists() and any(p.name != WORK for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a prepared-data folder; choose another --output_dir.")
    work = out / WORK
    work.mkdir(parents=True, exist_ok=True)
    atomic.write_json(settings_file, settings, indent=1)
    if not (out / TOKENIZER_DIR / "tokenizer.json").exists():
        with atomic.folder(out / TOKENIZER_DIR) as tmp:
            save_tokenizer(tokenizer, str(tmp))

    num_proc = args.num_proc or os.cpu_count() or 1
    phases, mark = {}, time.perf_counter()

    def phase(name):
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 2)
        mark = now

    dtype = settings["dtype"]
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with context.Pool(num_proc, _init_worker, (str(out / TOKENIZER_DIR / "tokenizer.json"), tokenizer.eos_token_id,
                                               dtype, args.min_chars)) as pool:
        counts = tokenize_sources(sources, args, work, pool, num_proc, options.shard_bytes)
        phase("tokenize")
        shards = [work / f"source-{s}" / f"{k:05d}" for s, n in enumerate(counts) for k in range(n)]
        split_file = work / "split.json"
        if not split_file.exists():
            atomic.write_json(split_file, split_and_deduplicate(shards, args.eval_tokens, options.memory_budget))
        split = json.loads(split_file.read_text())
        phase("deduplicate")
        if split["eval_tokens"] == 0 and args.eval_tokens > 0:
            raise ValueError("No document was left for the held-out split.")

        (out / "train").mkdir(exist_ok=True)
        stems = [out / "train" / f"{s:02d}-{k:05d}" for s, n in enumerate(counts) for k in range(n)]
        todo = [(str(shard), str(stem), args.block_size, args.packing, dtype)
                for shard, stem in zip(shards, stems) if not stem.with_name(stem.name + ".bin").exists()]
        for _ in tqdm(pool.imap_unordered(_pack_shard_task, todo), total=len(todo), desc="Packing", unit="shard",
                      disable=not todo):
            pass
        phase("pack")
    if not (out / "eval" / "tokens.bin").exists():
        eval_stats = write_eval(shards, out / "eval", dtype, tokenizer)
        atomic.write_json(work / "eval.json", eval_stats)
    eval_stats = json.loads((work / "eval.json").read_text())
    phase("eval")
    manifest = _manifest(out, settings, sources, counts, shards, stems, split, eval_stats,
                         time.perf_counter() - start)
    manifest["phase_seconds"] = phases  # of this invocation: a resumed preparation times only what it redid
    atomic.write_json(out / MANIFEST, manifest, indent=1)
    shutil.rmtree(work)
    return manifest


def _manifest(out: Path, settings, sources, counts, shards, stems, split, eval_stats, seconds) -> dict:
    block = settings["block_size"]
    train_shards, per_source = [], [dict(documents_in=0, dropped_short=0, documents=0, train_documents=0,
                                         train_tokens=0, rows=0, tokens_cropped=0, tokens_padded=0, bytes=0)
                                    for _ in sources]
    s_of = [s for s, n in enumerate(counts) for _ in range(n)]
    for s, shard, stem in zip(s_of, shards, stems):
        meta = json.loads((shard / "meta.json").read_text())
        lengths = np.load(shard / "lengths.npy")
        labels = np.fromfile(shard / "labels.u8", np.uint8)
        tokens = int(lengths[labels == LABEL_TRAIN].sum())
        if settings["packing"] == "concat":
            rows, cropped, padded = tokens // block, tokens - tokens // block * block, 0
        else:
            rows = len(np.load(stem.with_name(stem.name + ".rows.npy"), mmap_mode="r")) - 1
            cropped, padded = tokens - rows * block, 0
        train_shards.append({"file": str(stem.relative_to(out)), "source": s, "tokens": tokens, "rows": rows})
        p = per_source[s]
        for key in ("documents_in", "dropped_short", "documents", "bytes"):
            p[key] += meta[key]
        p["train_documents"] += int((labels == LABEL_TRAIN).sum())
        p.update(train_tokens=p["train_tokens"] + tokens, rows=p["rows"] + rows,
                 tokens_cropped=p["tokens_cropped"] + cropped, tokens_padded=p["tokens_padded"] + padded)
    train_tokens = sum(p["train_tokens"] for p in per_source)
    stats = {key: sum(p[key] for p in per_source) for key in per_source[0]}
    stats.update(duplicates=split["duplicates"], eval_documents=eval_stats["documents"],
                 eval_tokens=eval_stats["tokens"], eval_bytes=eval_stats["bytes"],
                 eval_rows=eval_stats["tokens"] // block,
                 eval_tokens_per_byte=eval_stats["tokens"] / max(eval_stats["bytes"], 1),
                 share_cropped=stats["tokens_cropped"] / max(train_tokens, 1),
                 share_padded=stats["tokens_padded"] / max(train_tokens, 1))
    return {"format": FORMAT, "openllm_version": __version__, "settings": settings,
            "sources": [{"id": src.id, "weight": src.weight, **p} for src, p in zip(sources, per_source)],
            "train_shards": train_shards, "stats": stats, "prepare_seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Command line: `openllm prepare`, from flags or a pretraining YAML


class PrepareParser:
    """Flags and `--config` YAML → (DataArguments, PrepareArguments). A pretraining recipe's YAML works as it is:
    its trainer settings are ignored, and its `output_dir` (the model's folder) is not ours: the shards go to
    `--output_dir`, else the YAML's `prepared_data_dir`."""

    def __init__(self, **kwargs):
        from transformers import HfArgumentParser

        self.parser = HfArgumentParser((DataArguments, PrepareArguments), **kwargs)
        self.parser.add_argument("--config", default=None, help="a YAML file (a pretraining recipe works)")

    def parse_args_and_config(self, argv=None):
        import yaml

        argv = list(sys.argv[1:] if argv is None else argv)
        config_args, remaining = self.parser.parse_known_args(argv)
        if config_args.config:
            with open(config_args.config) as f:
                config = yaml.safe_load(f) or {}
            known = {f.name for f in DataArguments.__dataclass_fields__.values()} | set(
                PrepareArguments.__dataclass_fields__) - {"output_dir"}
            self.parser.set_defaults(**{k: v for k, v in config.items() if k in known})
        data_args, options, *_, rest = self.parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
        unknown = [a for a in rest if a.startswith("--")]
        if unknown:
            self.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return data_args, options


def make_parser(**kwargs):
    return PrepareParser(**kwargs)


def main(data_args: DataArguments, options: PrepareArguments) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = prepare(data_args, options)
    report(options.output_dir or data_args.prepared_data_dir, manifest)
    return manifest


def report(folder: str, manifest: dict) -> None:
    s = manifest["stats"]
    print(f"\nPrepared {folder}: {s['train_tokens']:,} training tokens in {s['rows']:,} rows of "
          f"{manifest['settings']['block_size']} ({manifest['settings']['packing']} packing, "
          f"{s['share_cropped']:.2%} cropped), {s['eval_tokens']:,} held-out tokens.\n"
          f"{s['documents_in']:,} documents read; {s['dropped_short']:,} too short, {s['duplicates']:,} duplicates; "
          f"{manifest['prepare_seconds']:.0f} s.")
    for source in manifest["sources"]:
        print(f"  {source['id']}: weight {source['weight']}, {source['train_tokens']:,} tokens")
    print(f"Train on it: openllm pretrain ... --dataset_name {folder}")


__all__ = ["PrepareArguments", "Source", "sources_of", "prepare", "make_parser", "main"]
