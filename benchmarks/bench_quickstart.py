"""`make quickstart` measured: wall time, training tokens/s, peak memory and final bits per byte.

Runs the quickstart recipe in a fresh process and a fresh output folder, as a user would.
"""

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from readme import machine_description, write_section

ROOT = Path(__file__).resolve().parents[1]


def main(write_readme: bool = False):
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "recipes/pretrain.py", "--config", "recipes/pretrain_quickstart.yaml",
                   "--output_dir", out, "--disable_tqdm", "true"]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin",
                                                           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads((Path(out) / "training_summary.json").read_text())
        results = json.loads((Path(out) / "eval_results.json").read_text())
    metrics, data = summary["metrics"], summary["data"]
    tokens_per_s = metrics["tokens_seen"] / summary["train_runtime_s"]
    table = (
        f"`make quickstart` ({machine_description()}; {summary['hardware']}): tokenizer training, "
        f"{summary['training_args']['max_steps']} optimizer steps of {summary['training_args']['tokens_per_step']:,} "
        f"tokens, held-out evaluation and the model card, in one fresh process.\n\n"
        "| wall time | training time | training tokens/s | peak memory | parameters | tokens seen | "
        "held-out perplexity | held-out bits/byte |\n|---|---|---|---|---|---|---|---|\n"
        f"| {wall / 60:.1f} min | {summary['train_runtime_s'] / 60:.1f} min | {tokens_per_s:,.0f} | "
        f"{peak_mib:,.0f} MiB | {metrics['num_parameters']:,} | {metrics['tokens_seen']:,} | "
        f"{results['metrics']['perplexity']:.2f} | {results['metrics']['bits_per_byte']:.4f} |\n\n"
        f"Data: {data['documents']:,} documents, {data['train_tokens']:,} training tokens.")
    print(table)
    if write_readme:
        write_section("quickstart", table)


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
