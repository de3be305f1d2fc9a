"""Data preparation at two corpus sizes: `openllm prepare` against the tokenizer's own speed, and how soon
`openllm pretrain` takes its first step from the prepared folder.

For each size, an offline corpus of JSONL shards (`data_corpus.build_corpus`, cached) is prepared from scratch by
`python -m openllm prepare` in a subprocess (block size 1024, every core, 64Ki held-out tokens), while psutil samples
the process and its children: RSS every 0.1 s (peaks of the sum and of the main process; forked workers' shared
pages count once per process, so the sum overstates) and PSS every 2 s. The tokenizer's limit is `tokenizers`
`encode_batch` (and `encode_batch_fast`, alternating) over the same documents with the same cores (its own threads),
in ~4 MB batches, counting only the time inside the calls, in a subprocess of its own; prepare's tokenize phase (read,
clean, hash, tokenize, write) is compared with it. Then `python -m openllm pretrain` runs three steps of the `tiny`
preset on the prepared folder twice (the second with warm caches), timed from launch to the first training log line.
The tokenizer (byte-level BPE, 4,096 tokens) is trained once on the first ~20 MB of the smallest corpus.

    python benchmarks/bench_data.py [--sizes 250MB 1GB] [--write-readme]
    python benchmarks/run.py --only data [--write-readme]
"""

import argparse
import itertools
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import readme  # noqa: E402
from data_corpus import build_corpus, parse_size  # noqa: E402

SIZES = ("250MB", "1GB")
CACHE = ROOT / "outputs" / "bench-data"
BLOCK_SIZE, EVAL_TOKENS, VOCAB_SIZE = 1024, 65536, 4096
TOKENIZER_TEXT = 20 * 10**6  # bytes of text the tokenizer learns from
BATCH_BYTES = 4 << 20
CORES = os.cpu_count() or 1
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           PYTHONUNBUFFERED="1")  # log lines reach the pipe when printed, so their timestamps mean something
TRAIN_LOG = re.compile(r"[{,]\s*'loss':")  # the Trainer's log dict after a step ('eval_loss' does not match)
EVAL_RUNTIME = re.compile(r"'eval_runtime': '?([\d.]+)")


def openllm(*args) -> list[str]:
    return [sys.executable, "-m", "openllm", *args]


def texts(corpus: Path):
    for shard in sorted(corpus.glob("part-*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            for line in f:
                yield line, json.loads(line)["text"]


def tokenizer_for(corpus: Path, cache: Path) -> Path:
    """A byte-level BPE trained by `openllm tokenizer train` on the corpus's first ~20 MB, once."""
    folder = cache / f"tokenizer-{VOCAB_SIZE}-{corpus.name}"
    if (folder / "tokenizer.json").exists():
        return folder
    sample, size = cache / f"tokenizer-text-{corpus.name}.jsonl", 0
    with open(sample, "w", encoding="utf-8") as f:
        for line, text in texts(corpus):
            f.write(line)
            size += len(text.encode("utf-8"))
            if size >= TOKENIZER_TEXT:
                break
    subprocess.run(openllm("tokenizer", "train", "--corpus", str(sample), "--output", str(folder),
                           "--vocab-size", str(VOCAB_SIZE)), env=ENV, check=True)
    return folder


def run_sampled(cmd: list[str], log: Path, env=ENV) -> dict:
    """Run `cmd` (output to `log`), sampling RSS of it and its children: wall seconds, peaks, CPU seconds."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        main, peak = psutil.Process(proc.pid), {"tree": 0, "tree_pss": 0, "main": 0}
        for tick in itertools.count():
            time.sleep(0.1)
            if proc.poll() is not None:
                break
            # Forked workers share the parent's pages: RSS counts them in each, PSS divides them among them. PSS
            # walks the page tables (~25 ms a process under load), so it is read every 2 s, RSS every 0.1 s.
            pss = tick % 20 == 0
            try:
                memory = [(p.memory_full_info() if pss else p.memory_info())
                          for p in [main, *main.children(recursive=True)]]
            except psutil.NoSuchProcess:  # a worker just ended; sample again next time
                continue
            now = {"tree": sum(m.rss for m in memory), "main": memory[0].rss}
            if pss:
                now["tree_pss"] = sum(m.pss for m in memory)
            peak = {k: max(v, now.get(k, 0)) for k, v in peak.items()}
        proc.wait()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants roll up into their parent's count
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); the end of {log}:\n"
                         + "".join(open(log).readlines()[-40:]))
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": seconds, **{f"peak_{k}": v for k, v in peak.items()}, "cpu_seconds": cpu}


def prepare(corpus: Path, tokenizer: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    # the shards, not the folder: a folder's .json files are read as data too, corpus.json among them
    run = run_sampled(openllm("prepare", "--dataset_name", f"{corpus}/part-*.jsonl", "--text_column", "text",
                              "--tokenizer_name_or_path", str(tokenizer), "--block_size", str(BLOCK_SIZE),
                              "--output_dir", str(out), "--num_proc", str(CORES), "--eval_tokens", str(EVAL_TOKENS)),
                      out.with_name(out.name + ".log"))
    manifest = json.loads((out / "manifest.json").read_text())
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {**run, "manifest": manifest, "disk": disk}


def encode_limit(corpus: Path, tokenizer: Path) -> dict:
    """(In a subprocess of its own.) `encode_batch` and `encode_batch_fast` (ids without offsets, what prepare's
    workers call when this tokenizers has it) over every document, ~4 MB at a time, alternating which goes first:
    only the time inside the calls counts."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    methods = [m for m in ("encode_batch", "encode_batch_fast") if hasattr(tok, m)]
    total = {"batches": 0, "bytes": 0, "tokens": 0, **{m: 0.0 for m in methods}}

    def encode(batch, size):
        for method in methods if total["batches"] % 2 else methods[::-1]:
            start = time.perf_counter()
            encodings = getattr(tok, method)(batch, add_special_tokens=False)
            total[method] += time.perf_counter() - start
        total["tokens"] += sum(len(e.ids) for e in encodings)
        total["batches"], total["bytes"] = total["batches"] + 1, total["bytes"] + size

    batch, size = [], 0
    for _, text in texts(corpus):
        batch.append(text)
        size += len(text.encode("utf-8"))
        if size >= BATCH_BYTES:
            encode(batch, size)
            batch, size = [], 0
    if batch:
        encode(batch, size)
    return total


def limit(corpus: Path, tokenizer: Path) -> dict:
    env = dict(ENV, RAYON_NUM_THREADS=str(CORES), TOKENIZERS_PARALLELISM="true")
    out = subprocess.run([sys.executable, __file__, "--limit", str(corpus), str(tokenizer)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def first_step(prepared: Path, cache: Path) -> dict:
    """Seconds from launching `openllm pretrain` to its first training log line, and to its exit."""
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        config = Path(tmp) / "pretrain.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "dataset_name": str(prepared), "block_size": BLOCK_SIZE, "model_preset": "tiny",
            "model_config_overrides": {"max_position_embeddings": BLOCK_SIZE}, "per_device_train_batch_size": 4,
            "max_steps": 3, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no",
            "final_eval_documents": 0, "precision": "fp32", "disable_tqdm": True, "output_dir": f"{tmp}/model"}))
        start = time.perf_counter()
        proc = subprocess.Popen(openllm("pretrain", "--config", str(config)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=ENV)
        lines, first, evaluation = [], None, 0.0
        for line in proc.stdout:
            lines.append(line)
            if first is None and TRAIN_LOG.search(line):
                first = time.perf_counter() - start
            elif first is None and (found := EVAL_RUNTIME.search(line)):  # held-out loss before training
                evaluation += float(found[1])
        proc.wait()
    if proc.returncode or first is None:
        raise SystemExit(f"openllm pretrain failed ({proc.returncode}) or logged no step:\n" + "".join(lines[-40:]))
    return {"first_step": first, "initial_eval": evaluation, "seconds": time.perf_counter() - start}


def import_seconds() -> float:
    """`import openllm.training.pretrain` in a fresh interpreter, warm (the second of two)."""
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import openllm.training.pretrain"], env=ENV, check=True)
        seconds = time.perf_counter() - start
    return seconds


def corpus_dir(cache: Path, size: str) -> Path:
    return cache / f"corpus-{size.lower().removesuffix('b')}"  # 250MB -> corpus-250m


def measure(size: str, cache: Path, tokenizer: Path) -> dict:
    corpus = corpus_dir(cache, size)
    summary = build_corpus(corpus, parse_size(size))
    print(f"[{size}] preparing {summary['bytes'] / 1e6:,.0f} MB of text...", flush=True)
    prep = prepare(corpus, tokenizer, cache / f"prepared-{corpus.name}")
    print(f"[{size}] prepared in {prep['seconds']:.0f} s; measuring encode_batch...", flush=True)
    lim = limit(corpus, tokenizer)
    steps = [first_step(cache / f"prepared-{corpus.name}", cache) for _ in range(2)]
    return {"size": size, "corpus": summary, "prepare": prep, "limit": lim, "steps": steps}


def table(results: list[dict], imports: float) -> str:
    mb = 1e6

    def joined(values, fmt=".1f"):
        return " / ".join(format(v, fmt) for v in values)

    rows = ["| Corpus (text) | Documents | Prepare wall | Input MB/s | Kept tokens/s | "
            "Phases: tokenize / dedup / pack / eval | CPU busy | Tokenize phase MB/s | "
            "Limit MB/s: encode_batch (_fast) | Tokenize / limit (/ fast) | Prepare / limit | "
            "Peak RSS, tree (main) | Peak PSS, tree | Output on disk | Kept tokens (duplicate docs) | "
            "First step, 1st / 2nd run (of which eval before training) |",
            "|" + "---|" * 16]
    for r in results:
        prep, manifest, steps = r["prepare"], r["prepare"]["manifest"], r["steps"]
        stats, phases, text = manifest["stats"], manifest["phase_seconds"], r["corpus"]["bytes"]
        tokenize = text / phases["tokenize"] / mb
        lim, fast = (r["limit"]["bytes"] / r["limit"].get(m, math.nan) / mb
                     for m in ("encode_batch", "encode_batch_fast"))
        rate = text / prep["seconds"] / mb
        tokens = stats["train_tokens"] + stats["eval_tokens"]
        rows.append(
            f"| {text / mb:,.0f} MB | {r['corpus']['documents']:,} | {prep['seconds']:.0f} s | {rate:.2f} | "
            f"{tokens / prep['seconds'] / 1e6:.2f} M | "
            f"{joined((phases[k] for k in ('tokenize', 'deduplicate', 'pack', 'eval')), '.0f')} s | "
            f"{prep['cpu_seconds'] / prep['seconds']:.2f} of {CORES} cores | {tokenize:.2f} | "
            f"{lim:.2f} ({fast:.2f}) | "
            f"{tokenize / lim:.2f}× ({tokenize / fast:.2f}×) | {rate / lim:.2f}× | {prep['peak_tree'] / mb:,.0f} MB "
            f"({prep['peak_main'] / mb:,.0f} MB) | {prep['peak_tree_pss'] / mb:,.0f} MB | "
            f"{prep['disk'] / mb:,.0f} MB | {tokens / 1e6:,.0f} M "
            f"({stats['duplicates']:,}) | {joined(s['first_step'] for s in steps)} s "
            f"({joined(s['initial_eval'] for s in steps)} s) |")
    memory = " and ".join(f"{p['peak_tree'] / 1e9:.2f} GB RSS summed, {p['peak_tree_pss'] / 1e9:.2f} GB PSS, "
                          f"{p['peak_main'] / 1e9:.2f} GB in the main process at {r['corpus']['bytes'] / 1e6:,.0f} MB"
                          for r in results for p in [r["prepare"]])
    return "\n".join([
        "### Data preparation: `openllm prepare`, and the first training step from its shards",
        "",
        f"{readme.machine_description()}. `openllm prepare --block_size {BLOCK_SIZE} --num_proc {CORES} "
        f"--eval_tokens {EVAL_TOKENS}` from scratch, byte-level BPE of {VOCAB_SIZE:,} tokens, on offline corpora "
        "of Python sources and docs (`benchmarks/data_corpus.py`). MB/s count the corpus's UTF-8 text; the limit is "
        f"`tokenizers` `encode_batch` alone on the same documents with {CORES} threads (`encode_batch_fast`, ids "
        "without offsets, in parentheses); prepare can pass it, as its workers are one single-threaded process per "
        "core calling `encode_batch_fast`, and a process's threads scale less well than processes. Kept tokens: "
        "after deduplication. First step: seconds from "
        f"launching `openllm pretrain` (tiny preset, batch 4 × {BLOCK_SIZE}) to its first training log, run twice "
        f"(the second with warm caches); importing `openllm.training.pretrain` alone takes {imports:.1f} s.",
        "",
        *rows,
        "",
        f"Peak memory of `openllm prepare` with its workers: {memory}.",
        "",
        "`python benchmarks/bench_data.py --write-readme`",
    ])


def main(write_readme: bool = False, sizes=SIZES, cache: Path = CACHE):
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    smallest = min(sizes, key=parse_size)
    corpus = corpus_dir(cache, smallest)
    build_corpus(corpus, parse_size(smallest))
    tokenizer = tokenizer_for(corpus, cache)
    results = [measure(size, cache, tokenizer) for size in sizes]
    markdown = table(results, import_seconds())
    (cache / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(markdown)
    if write_readme:
        readme.write_section("data", markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="corpus sizes (default: 250MB 1GB)")
    parser.add_argument("--cache", default=str(CACHE), help="folder for the corpora, tokenizer and prepared data")
    parser.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--limit", nargs=2, metavar=("CORPUS", "TOKENIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit:
        print(json.dumps(encode_limit(*map(Path, args.limit))))
    else:
        main(args.write_readme, args.sizes, args.cache)
