"""The pretraining data's arguments, shared by `openllm prepare` and `openllm pretrain` (the same YAML serves both)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

PACKINGS = ("concat", "best_fit")


@dataclass
class DataArguments:
    """Where the pretraining text comes from, how it is cleaned and split, and the tokenizer that encodes it."""

    dataset_name: str = field(
        default="rajpurkar/squad",
        metadata={"help": "Hub dataset id, local file/folder/glob (.txt .md .jsonl .json .parquet .csv), "
                          "'builtin:python-docs' (the standard library's docstrings, offline), or a folder that "
                          "`openllm prepare` wrote."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_splits: Optional[list[str]] = field(
        default=None, metadata={"help": "Hub splits to read; all of them by default (the held-out split is ours)."})
    dataset_mixture: Optional[list[dict] | str] = field(
        default=None, metadata={"help": "Several sources with weights, instead of dataset_name: a list of "
                                        "{id, weight, config, split, text_column} (JSON on the command line). "
                                        "Prepared data only."})
    text_column: str = field(default="context", metadata={"help": "Column holding the text (not used for .txt)."})
    sample_by: str = field(
        default="paragraph", metadata={"help": "How .txt/.md files split into documents: line, paragraph, document."})
    min_chars: int = field(default=32, metadata={"help": "Drop documents shorter than this after cleaning."})
    eval_fraction: float = field(
        default=0.01, metadata={"help": "Share of documents held out for validation (data processed in memory)."})
    eval_tokens: int = field(
        default=1 << 20, metadata={"help": "Tokens held out for validation in prepared data: the same evaluation "
                                           "cost at any corpus size."})
    max_documents: Optional[int] = field(default=None, metadata={"help": "Use only the first N documents."})
    block_size: int = field(default=1024, metadata={"help": "Tokens per packed training sequence."})
    packing: str = field(
        default="concat", metadata={"help": "Prepared data: 'concat' cuts the document stream into blocks; "
                                            "'best_fit' starts every block at a document and fills it best-fit."})
    num_proc: Optional[int] = field(default=None, metadata={"help": "Processes for tokenization and packing."})
    prepared_data_dir: Optional[str] = field(
        default=None, metadata={"help": "Train from token shards in this folder (`openllm prepare --config` writes "
                                        "them there); pretraining prepares them first when the folder is missing."})
    streaming: bool = field(
        default=False, metadata={"help": "Read the source as a stream (Hub or local parquet/jsonl): into the prepared "
                                         "folder when there is one (no full download first), else straight into "
                                         "training, tokenizing and packing on the fly."})
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Trained tokenizer folder or Hub id. If unset, a tokenizer is trained on the "
                                        "training split and saved with the model."})
    tokenizer_type: str = field(default="bpe", metadata={"help": "Kind of tokenizer to train: bpe, unigram, char."})
    vocab_size: int = field(default=32000, metadata={"help": "Vocabulary size of the tokenizer to train."})

    def __post_init__(self):
        if isinstance(self.dataset_mixture, str):
            self.dataset_mixture = json.loads(self.dataset_mixture)
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {self.packing!r}.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {self.block_size}.")


__all__ = ["DataArguments", "PACKINGS"]
