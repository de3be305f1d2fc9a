"""Held-out texts, read exactly as written: what `openllm eval` and `openllm calibrate` score.

    texts, split = load_eval_texts("held_out.jsonl")
    texts, split = load_eval_texts("Salesforce/wikitext", dataset_config="wikitext-2-raw-v1", split="test")

Unlike `corpus.load_corpus` (training documents: cleaned, deduplicated, packed), nothing is normalised here: the
bytes of each text are what bits per byte are counted over, and one split is read as it is.
"""

from pathlib import Path

from datasets import get_dataset_split_names, load_dataset

from .corpus import FILE_BUILDERS

PLAIN_TEXT = (".txt", ".md")


def add_text_arguments(parser, dataset_help: str, required: bool = True) -> None:
    """`--dataset` and how to read texts from it, for the commands that read texts (`load_args_texts`)."""
    parser.add_argument("--dataset", required=required,
                        help=f"{dataset_help}: a .txt/.jsonl/.json/.csv/.parquet file, a folder or Hub id")
    parser.add_argument("--dataset-config", help="Hub dataset configuration, e.g. wikitext-2-raw-v1")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--split", help="default: the first of validation, test, train that exists")
    parser.add_argument("--max-samples", type=int, help="use only the first N non-empty texts")


def load_args_texts(args) -> tuple[list[str], str]:
    """`load_eval_texts` with the arguments of `add_text_arguments`."""
    return load_eval_texts(args.dataset, text_column=args.text_column, split=args.split,
                           dataset_config=args.dataset_config, max_samples=args.max_samples)


def load_eval_texts(
    dataset: str,
    *,
    text_column: str = "text",
    split: str | None = None,
    dataset_config: str | None = None,
    max_samples: int | None = None,
) -> tuple[list[str], str]:
    """(non-empty texts, split used) from a local .txt/.md/.jsonl/.json/.csv/.parquet file, a local dataset folder,
    or a Hub dataset id. A .txt or .md file holds one text per blank-line-separated paragraph. Without `split`, the
    first of validation/test/train that exists is used. `max_samples` keeps the first N non-empty texts."""
    path = Path(dataset)
    if path.suffix in FILE_BUILDERS and not path.is_file():
        raise FileNotFoundError(f"Dataset file {dataset!r} does not exist.")
    if path.is_file():
        if path.suffix not in FILE_BUILDERS:
            raise ValueError(f"Cannot read {dataset!r}: local files must end in {', '.join(FILE_BUILDERS)}.")
        if split not in (None, "train"):
            raise ValueError(f"A local file has a single split, 'train'; drop --split {split} or pass a dataset "
                             "folder or Hub id that has that split.")
        split = "train"
        if path.suffix in PLAIN_TEXT:
            rows = [{text_column: block} for block in path.read_text(encoding="utf-8").split("\n\n")]
            return _clean_texts(rows, text_column, dataset, split, max_samples, columns=[text_column]), split
        rows = _load_dataset(FILE_BUILDERS[path.suffix], None, split, max_samples, data_files=str(path))
    else:
        if split is None:
            names = get_dataset_split_names(dataset, dataset_config)
            split = next((s for s in ("validation", "test", "train") if s in names), names[0])
        rows = _load_dataset(dataset, dataset_config, split, max_samples)
    return _clean_texts(rows, text_column, dataset, split, max_samples, columns=rows.column_names), split


def _load_dataset(path, name, split, max_samples, **kwargs):
    # streaming reads only the rows a capped evaluation needs, instead of downloading the whole split first
    return load_dataset(path, name, split=split, streaming=max_samples is not None, **kwargs)


def _clean_texts(rows, text_column, dataset, split, max_samples, columns) -> list[str]:
    texts = []
    for row in rows:
        columns = columns or list(row)  # a streamed dataset may only know its columns once it yields a row
        if text_column not in columns:
            raise ValueError(f"Column {text_column!r} is not in {dataset!r} (split {split!r}); its columns are "
                             f"{', '.join(columns)}. Pass the right one with --text-column.")
        text = row[text_column]
        if not isinstance(text, str):
            raise TypeError(f"Column {text_column!r} of {dataset!r} holds {type(text).__name__}, not text. Pass a "
                            "column of strings with --text-column.")
        if text.strip():
            texts.append(text)
            if max_samples is not None and len(texts) >= max_samples:
                break
    if not texts:
        raise ValueError(f"{dataset!r} (split {split!r}, column {text_column!r}) has no non-empty text to evaluate.")
    return texts
