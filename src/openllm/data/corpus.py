"""Pretraining data: load documents, clean, deduplicate, hold out a validation split, tokenize and pack.

    corpus = load_corpus("rajpurkar/squad", text_column="context")      # or local files, or BUILTIN_CORPUS
    train_blocks, eval_blocks = pack_corpus(corpus, tokenizer, block_size=1024)
    corpus.stats                                                        # counts at every step

Sources (`load_documents`):
- a Hub dataset id (`owner/name`), every split concatenated unless `splits` names some;
- local files: `.txt`/`.md` (one document per blank-line-separated paragraph by default), `.jsonl`/`.json`,
  `.parquet`, `.csv`; a single file, a glob (`data/**/*.jsonl`) or a folder (searched recursively);
- `BUILTIN_CORPUS` (`"builtin:python-docs"`): the docstrings of this Python's standard library, no download.

Every step runs through `datasets.map`/`filter`, so it is cached on disk and can use `num_proc` processes.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import logging
import math
import os
import re
import sysconfig
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from datasets.fingerprint import Hasher

logger = logging.getLogger(__name__)

BUILTIN_CORPUS = "builtin:python-docs"
# extension → `datasets` packaged builder
FILE_BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
                 ".csv": "csv"}
TEXT_DTYPES = ("string", "large_string")
# Parts of the standard library that are tests, demos or vendored code rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "dist-packages", "__pycache__",
                "ensurepip", "pydoc_data"}


@dataclass
class Corpus:
    """Cleaned, deduplicated documents (one `text` column) split into train and held-out validation sets."""

    train: "datasets.Dataset"  # noqa: F821
    eval: Optional["datasets.Dataset"]  # noqa: F821
    stats: dict = field(default_factory=dict)
    source: str = ""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_documents(source: str, text_column: str = "text", config_name: Optional[str] = None,
                   splits: Optional[list[str]] = None, sample_by: str = "paragraph", streaming: bool = False):
    """Load `source` as a `datasets.Dataset` (an `IterableDataset` when `streaming`) with one string column, `text`.

    `text_column` names the column holding the text in Hub datasets and in .jsonl/.json/.parquet/.csv files;
    .txt/.md files are split into documents by `sample_by` ("line", "paragraph" or "document"). Streaming reads
    local files and Hub datasets as they come, without an Arrow copy on disk.
    """
    if source == BUILTIN_CORPUS:
        return python_docs_corpus()
    if _looks_local(source):
        return _load_local(source, text_column, sample_by, streaming)
    return _load_hub(source, text_column, config_name, splits, streaming)


def _looks_local(source: str) -> bool:
    return (os.path.exists(source) or any(c in source for c in "*?[") or source.startswith((".", "/", "~"))
            or Path(source).suffix.lower() in FILE_BUILDERS or source.count("/") > 1)


def _expand_files(source: str) -> list[str]:
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        files = [str(p) for p in Path(path).rglob("*") if p.is_file() and p.suffix.lower() in FILE_BUILDERS]
        if not files:
            raise FileNotFoundError(f"Folder {source!r} holds no files with a supported extension "
                                    f"({', '.join(FILE_BUILDERS)}).")
    elif os.path.isfile(path):
        files = [path]
    else:
        files = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
        if not files:
            raise FileNotFoundError(f"No file or folder matches {source!r}. Pass an existing file, folder or glob, "
                                    f"a Hub dataset id (owner/name), or {BUILTIN_CORPUS!r}.")
    unsupported = sorted({Path(f).suffix or f for f in files if Path(f).suffix.lower() not in FILE_BUILDERS})
    if unsupported:
        raise ValueError(f"Unsupported file type(s) {unsupported} in {source!r}; "
                         f"supported: {', '.join(FILE_BUILDERS)}.")
    return sorted(files)


def _load_local(source: str, text_column: str, sample_by: str, streaming: bool = False):
    if sample_by not in ("line", "paragraph", "document"):
        raise ValueError(f"sample_by must be 'line', 'paragraph' or 'document', got {sample_by!r}.")
    by_builder: dict[str, list[str]] = {}
    for f in _expand_files(source):
        by_builder.setdefault(FILE_BUILDERS[Path(f).suffix.lower()], []).append(f)
    parts = []
    for builder, files in sorted(by_builder.items()):
        kwargs = {"sample_by": sample_by} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **kwargs)
        parts.append(_select_text_column(ds, "text" if builder == "text" else text_column, f"{builder} files"))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _load_hub(source: str, text_column: str, config_name: Optional[str], splits: Optional[list[str]],
              streaming: bool = False):
    try:
        dsd = datasets.load_dataset(source, config_name, streaming=streaming)
    except Exception as e:  # offline, unknown id, gated: all end here, so say what to do instead
        raise RuntimeError(
            f"Could not load the Hub dataset {source!r} ({type(e).__name__}: {e}). Check the id and your network, "
            f"or train on local files (a path, glob or folder) or on the offline corpus {BUILTIN_CORPUS!r}."
        ) from e
    names = list(dsd) if not splits else list(splits)
    missing = [s for s in names if s not in dsd]
    if missing:
        raise ValueError(f"Dataset {source!r} has no split(s) {missing}; available: {list(dsd)}.")
    parts = [_select_text_column(dsd[s], text_column, f"{source}[{s}]") for s in names]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _select_text_column(ds, column: str, where: str):
    if ds.features is None:  # a stream whose schema is known only once read
        ds = ds._resolve_features()
    if column not in ds.column_names:
        raise ValueError(f"Column {column!r} not found in {where}; available columns: {ds.column_names}. "
                         f"Set `text_column` to the one holding the text.")
    dtype = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
    if dtype not in TEXT_DTYPES:
        text_columns = [c for c in ds.column_names if getattr(ds.features[c], "dtype", None) in TEXT_DTYPES]
        raise ValueError(f"Column {column!r} in {where} holds {dtype}, not text. Text columns: {text_columns}.")
    ds = ds.select_columns([column])
    ds = ds.rename_column(column, "text") if column != "text" else ds
    return ds.cast_column("text", datasets.Value("string")) if dtype != "string" else ds


def python_docs_corpus(packages: Optional[list[str]] = None) -> "datasets.Dataset":
    """The offline built-in corpus: every module, class and function docstring of this Python's standard library.

    Read with `ast` from the stdlib's .py files (nothing is imported), in sorted file order, skipping tests,
    demos and vendored code; each docstring becomes one document headed by its qualified name
    (`json.JSONEncoder.encode`). The result depends only on the Python version. `packages` restricts it to some
    top-level modules or packages (e.g. `["json", "email"]`).
    """
    root = sysconfig.get_paths()["stdlib"]
    return datasets.Dataset.from_generator(_python_docstrings, gen_kwargs={"root": root, "packages": packages},
                                           features=datasets.Features({"text": datasets.Value("string")}))


def _python_docstrings(root: str, packages: Optional[list[str]]):
    base = Path(root)
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).parts
        if any(p in _STDLIB_SKIP or p.startswith("test") for p in parts):
            continue
        module = ".".join(parts)[: -len(".py")].removesuffix(".__init__")
        if packages and module.split(".")[0] not in packages:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        yield from _docstrings(tree, module)


def _docstrings(node, qualname: str):
    doc = ast.get_docstring(node, clean=True)
    if doc:
        yield {"text": f"{qualname}\n\n{doc}"}
    for child in node.body:
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{qualname}.{child.name}")


# ----------------------------------------------------------------------------------------------------------------
# Cleaning, deduplication, split

_TRAILING_SPACE = re.compile(r"[ \t\f\v]+$", re.M)
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Unix newlines, no trailing spaces on any line, at most one blank line in a row, no leading/trailing blank
    space. Spaces inside lines are kept as they are (code indentation carries meaning)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("", text)).strip()


def _clean_batch(batch):
    texts = [normalize_whitespace(t or "") for t in batch["text"]]
    return {"text": texts, "hash": [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]}


def load_corpus(source: str, text_column: str = "text", *, config_name: Optional[str] = None,
                splits: Optional[list[str]] = None, sample_by: str = "paragraph", min_chars: int = 32,
                eval_fraction: float = 0.01, max_documents: Optional[int] = None,
                num_proc: Optional[int] = None) -> Corpus:
    """Load, clean, deduplicate and split a corpus; `corpus.stats` reports the counts at each step.

    Cleaning normalises whitespace (`normalize_whitespace`) and drops documents shorter than `min_chars`
    characters. Deduplication is exact: documents with the same SHA-1 after cleaning are kept once (first
    occurrence). The validation split is the `eval_fraction` of documents with the smallest SHA-1 (at least one),
    so it is the same for any order of the input files and any `num_proc`.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    ds = load_documents(source, text_column, config_name=config_name, splits=splits, sample_by=sample_by)
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    stats = {"documents_in": len(ds)}
    if len(ds) == 0:
        raise ValueError(f"{source!r} contains no documents.")

    ds = ds.map(_clean_batch, batched=True, num_proc=num_proc, desc="Normalising whitespace")
    ds = ds.filter(lambda b: [len(t) >= min_chars for t in b["text"]], batched=True, num_proc=num_proc,
                   desc=f"Dropping documents under {min_chars} characters")
    stats["dropped_short"] = stats["documents_in"] - len(ds)
    if len(ds) == 0:
        raise ValueError(f"No documents left in {source!r} after cleaning: all {stats['documents_in']} are shorter "
                         f"than min_chars={min_chars} characters. Lower `min_chars` or check `text_column`.")

    hashes = list(ds["hash"])
    seen, keep = set(), []
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    if len(keep) < len(ds):
        ds = ds.select(keep)
        hashes = [hashes[i] for i in keep]
    stats["duplicates"] = stats["documents_in"] - stats["dropped_short"] - len(ds)
    stats["documents"] = len(ds)
    stats["characters"] = sum(ds.map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True,
                                     remove_columns=ds.column_names, desc="Counting characters")["n"])

    eval_ds = None
    if eval_fraction > 0:
        if len(ds) < 2:
            raise ValueError(f"Only {len(ds)} document left in {source!r}: a validation split needs at least 2. "
                             "Add data or set eval_fraction=0.")
        n_eval = max(1, round(eval_fraction * len(ds)))
        order = np.argsort(np.array(hashes))
        eval_idx = np.sort(order[:n_eval])
        train_idx = np.sort(order[n_eval:])
        eval_ds, ds = ds.select(eval_idx), ds.select(train_idx)
    stats["train_documents"] = len(ds)
    stats["eval_documents"] = len(eval_ds) if eval_ds is not None else 0
    logger.info("Corpus %s: %s", source, _format(stats))
    return Corpus(train=ds, eval=eval_ds, stats=stats, source=source)


# ----------------------------------------------------------------------------------------------------------------
# Tokenization and packing


def _tokenize_batch(batch, tokenizer):
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return {"input_ids": [x + [eos] for x in ids], "num_bytes": [len(t.encode("utf-8")) for t in batch["text"]]}


def _pack_batch(batch, block_size):
    flat = list(chain.from_iterable(batch["input_ids"]))
    n = len(flat) // block_size * block_size
    return {"input_ids": [flat[i: i + block_size] for i in range(0, n, block_size)]}


def tokenize_documents(ds, tokenizer, num_proc: Optional[int] = None):
    """`input_ids` (the document's tokens followed by EOS) and `num_bytes` (UTF-8 bytes of its text) per document."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token, which separates documents when packing.")
    # The fingerprint names the tokenizer by its serialised content, so the cache is reused exactly when it matches.
    fingerprint = Hasher.hash([ds._fingerprint, tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id])
    return ds.map(_tokenize_batch, batched=True, num_proc=num_proc, fn_kwargs={"tokenizer": tokenizer},
                  remove_columns=ds.column_names, new_fingerprint=fingerprint, desc="Tokenizing")


def pack_documents(ds, block_size: int, num_proc: Optional[int] = None):
    """Concatenate tokenized documents (EOS-separated) and cut them into `block_size`-token rows of `input_ids`.

    Documents may span two blocks and attention is not masked at document boundaries (GPT-2/nanoGPT packing);
    the tail of each 1000-document batch (and of each of the `num_proc` shards) that does not fill a block is
    dropped (counted in `tokens_dropped`).
    """
    return ds.map(_pack_batch, batched=True, batch_size=1000, num_proc=num_proc, fn_kwargs={"block_size": block_size},
                  remove_columns=ds.column_names, desc=f"Packing into blocks of {block_size}")


def pack_corpus(corpus: Corpus, tokenizer, block_size: int, num_proc: Optional[int] = None):
    """Tokenize and pack both splits; returns (train_blocks, eval_blocks) and adds token counts to `corpus.stats`:
    `{split}_tokens`, `{split}_blocks`, `{split}_bytes`, `tokens_dropped`, and `eval_tokens_per_byte`, which turns
    a loss in nats per token into bits per byte."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}.")
    stats = corpus.stats
    stats["block_size"] = block_size
    stats["tokens_dropped"] = 0
    out = []
    for split, ds in (("train", corpus.train), ("eval", corpus.eval)):
        if ds is None:
            out.append(None)
            continue
        tokenized = tokenize_documents(ds, tokenizer, num_proc)
        lengths = tokenized.map(lambda b: {"n": [len(x) for x in b["input_ids"]]}, batched=True,
                                remove_columns=tokenized.column_names, desc="Counting tokens")["n"]
        stats[f"{split}_tokens"] = int(sum(lengths))
        stats[f"{split}_bytes"] = int(sum(tokenized["num_bytes"]))
        blocks = pack_documents(tokenized.remove_columns("num_bytes"), block_size, num_proc)
        stats[f"{split}_blocks"] = len(blocks)
        stats["tokens_dropped"] += stats[f"{split}_tokens"] - len(blocks) * block_size
        if len(blocks) == 0:
            raise ValueError(f"The {split} split has {stats[f'{split}_tokens']} tokens, fewer than one block of "
                             f"{block_size}. Use more data, a smaller block_size"
                             + (", or a larger eval_fraction." if split == "eval" else "."))
        out.append(blocks)
    if corpus.eval is not None:
        stats["eval_tokens_per_byte"] = stats["eval_tokens"] / stats["eval_bytes"]
    logger.info("Packed %s: %s", corpus.source, _format(stats))
    return tuple(out)


def bits_per_byte(loss: float, tokens_per_byte: float) -> float:
    """Bits per UTF-8 byte from a mean loss in nats per token: comparable across tokenizers."""
    return loss / math.log(2) * tokens_per_byte


def _format(stats: dict) -> str:
    return ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in stats.items())


__all__ = ["BUILTIN_CORPUS", "Corpus", "load_documents", "python_docs_corpus", "normalize_whitespace", "load_corpus",
           "tokenize_documents", "pack_documents", "pack_corpus", "bits_per_byte"]
