"""A text corpus of a requested size, built offline from the Python sources and docs already on this machine, for the
data-preparation benchmark (tokenize, deduplicate, pack into token shards).

    python benchmarks/data_corpus.py /tmp/corpus-1g --size 1GB [--seed 0]

Documents are whole files (.py, .pyi, .md, .rst, .txt under 1 MiB, valid UTF-8) from the Python installations
(base, this venv, the repo's .venv and .venv-compat, /usr/lib/python3*) and /usr/share/doc. The same file installed
in two environments stays twice, so deduplication has real work at the machine's natural rate. When the distinct
text is smaller than the request, the rest is made of variants: a real document with its paragraphs (or, with a
single paragraph, its lines) in a seeded order, which keeps document lengths natural while changing every hash.
Output: `part-NNNNN.jsonl` shards of `{"text": ...}` lines, and `corpus.json` with the counts. Sizes count the
UTF-8 text of the documents (what a tokenizer reads); `jsonl_bytes` is the size on disk.
"""

import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS = (".py", ".pyi", ".md", ".rst", ".txt")
MAX_FILE_BYTES = 1 << 20
FORMAT = 1  # bump when the selection or the variants change, so old corpora are rebuilt


def source_roots() -> list[Path]:
    """The folders to read, in a fixed order, each once (a venv's lib64 and a nested root would repeat files)."""
    prefixes = [sys.base_prefix, sys.prefix, ROOT / ".venv", ROOT / ".venv-compat", "/usr", "/usr/local"]
    candidates = [p for prefix in prefixes for p in sorted(glob.glob(f"{prefix}/lib/python3*"))] + ["/usr/share/doc"]
    roots: list[Path] = []
    for candidate in candidates:
        path = Path(candidate).resolve()
        if path.is_dir() and not any(path == r or r in path.parents for r in roots):
            roots.append(path)
    return roots


def walk(root: Path):
    """Text files under `root`, sorted, without following links (a link would repeat a file or loop)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=False) and entry.name.endswith(EXTENSIONS):
            if 0 < entry.stat(follow_symlinks=False).st_size <= MAX_FILE_BYTES:
                yield entry.path


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.strip() else None


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def scan() -> tuple[list[tuple[str, int, bytes]], list[dict]]:
    """(path, UTF-8 bytes, hash) of every usable file, and per-root totals. Only metadata is kept, never the text."""
    files, sources = [], []
    for root in source_roots():
        count, size = 0, 0
        for path in walk(root):
            text = read_text(path)
            if text is not None:
                n = len(text.encode("utf-8"))
                files.append((path, n, digest(text)))
                count, size = count + 1, size + n
        sources.append({"root": str(root), "documents": count, "bytes": size})
    return files, sources


def variant(text: str, rng: random.Random) -> str | None:
    """The document's paragraphs in a seeded order; its lines when it has one paragraph; None if nothing moves."""
    sep = "\n\n" if text.count("\n\n") >= 1 else "\n"
    parts = text.split(sep)
    rng.shuffle(parts)
    out = sep.join(parts)
    return None if out == text else out


def real_documents(files, selected: set[bytes], rng: random.Random):
    order = list(range(len(files)))
    rng.shuffle(order)  # spread the copies of a file (and each source) over the whole corpus
    for i in order:
        path, _, h = files[i]
        if h in selected and (text := read_text(path)) is not None:
            yield text, False


def variant_documents(firsts: list[str], seed: int):
    """Endless rounds over the distinct files; round r permutes with a seed of its own, so rounds differ too."""
    for r in range(1, 1 << 30):
        produced = False
        for path in firsts:
            text = read_text(path)
            if text is not None and (out := variant(text, random.Random(f"{seed}:{r}:{path}"))) is not None:
                produced = True
                yield out, True
        if not produced:
            return


def build_corpus(output_dir: str | Path, size_bytes: int, shard_bytes: int = 64 << 20, seed: int = 0) -> dict:
    """Write about `size_bytes` of text (it stops after the document that reaches it) as JSONL shards and
    `corpus.json` into `output_dir`, or return the existing `corpus.json` if it was built with the same arguments."""
    output_dir = Path(output_dir)
    request = {"format": FORMAT, "size_bytes": size_bytes, "shard_bytes": shard_bytes, "seed": seed}
    if (old := load_matching(output_dir, request)) is not None:
        return old
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "corpus.json").exists():
        raise FileExistsError(f"{output_dir} holds something other than a corpus; not replacing it")

    files, sources = scan()
    if not files:
        raise RuntimeError("no text files found under " + ", ".join(s["root"] for s in sources))
    # Group identical files; take whole groups in a seeded order, so a smaller corpus keeps the natural share of
    # duplicates instead of losing the second copy of most files.
    groups: dict[bytes, list] = {}  # hash -> [copies, bytes per copy, first path]; insertion order is scan order
    for path, n, h in files:
        groups.setdefault(h, [0, n, path])[0] += 1
    order = list(groups)
    rng = random.Random(seed)
    rng.shuffle(order)
    selected, real_bytes = set(), 0
    for h in order:
        if real_bytes >= size_bytes:
            break
        selected.add(h)
        real_bytes += groups[h][0] * groups[h][1]
    planned = {False: min(real_bytes, size_bytes), True: max(size_bytes - real_bytes, 0)}
    firsts = [groups[h][2] for h in order]
    streams = {False: real_documents(files, selected, rng), True: variant_documents(firsts, seed)}

    tmp = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stats = write_shards(tmp, streams, planned, shard_bytes)
        summary = {**request, **stats, "available": {"documents": len(files), "bytes": sum(f[1] for f in files),
                                                     "distinct_documents": len(groups),
                                                     "distinct_bytes": sum(g[1] for g in groups.values())},
                   "sources": sources}
        (tmp / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
        # The rename is the commit: a killed build leaves only the hidden temporary folder, never a partial corpus.
        if output_dir.exists():
            old_dir = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
            output_dir.rename(old_dir)
            tmp.rename(output_dir)
            shutil.rmtree(old_dir)
        else:
            tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def write_shards(folder: Path, streams: dict, planned: dict, shard_bytes: int) -> dict:
    """Interleave real documents and variants in proportion to their planned bytes, so every shard (and any prefix
    of the corpus) has the same mix, and roll to a new shard after `shard_bytes` of JSONL."""
    done = {False: 0, True: 0}
    counts = {False: 0, True: 0}
    hashes: set[bytes] = set()
    shards, shard, shard_size, jsonl_bytes = [], None, 0, 0
    while behind := [k for k in (False, True) if planned[k] > done[k]]:
        kind = min(behind, key=lambda k: done[k] / planned[k])
        doc = next(streams[kind], None)
        if doc is None:  # a stream ran dry (files gone, nothing left to permute): the corpus ends short
            planned[kind] = done[kind]
            continue
        text = doc[0]
        raw = text.encode("utf-8")
        line = (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")
        if shard is None or shard_size >= shard_bytes:
            if shard is not None:
                shard.close()
            shards.append(f"part-{len(shards):05d}.jsonl")
            shard, shard_size = open(folder / shards[-1], "wb"), 0
        shard.write(line)
        shard_size += len(line)
        jsonl_bytes += len(line)
        done[kind] += len(raw)
        counts[kind] += 1
        hashes.add(hashlib.blake2b(raw, digest_size=16).digest())
    if shard is not None:
        shard.close()
    return {"documents": counts[False] + counts[True], "bytes": done[False] + done[True],
            "distinct_documents": len(hashes), "real_documents": counts[False], "real_bytes": done[False],
            "variant_documents": counts[True], "variant_bytes": done[True], "jsonl_bytes": jsonl_bytes,
            "shards": shards}


def load_matching(output_dir: Path, request: dict) -> dict | None:
    """The existing summary if it was built with `request` and its shards are all there at their sizes."""
    try:
        summary = json.loads((output_dir / "corpus.json").read_text())
    except (OSError, ValueError):
        return None
    if any(summary.get(k) != v for k, v in request.items()):
        return None
    on_disk = sum((output_dir / name).stat().st_size for name in summary["shards"] if (output_dir / name).exists())
    return summary if on_disk == summary["jsonl_bytes"] else None


def parse_size(text: str) -> int:
    """'250MB', '1GB', '1.5GB' (powers of 1000, so 0.25GB is 250MB), '1GiB', or plain bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]I?B|B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 250MB, 1GB, 1.5GB)")
    return int(float(match[1]) * units[match[2] or ""])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--size", type=parse_size, default=10**9, help="text to write, e.g. 250MB, 1GB (default)")
    parser.add_argument("--shard-size", type=parse_size, default=64 << 20, help="JSONL bytes per shard")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = build_corpus(args.output_dir, args.size, args.shard_size, args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}, indent=2))
