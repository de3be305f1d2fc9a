"""The whole chain from scratch, as `make chain` runs it: pretraining → SFT → reward model → DPO → RLHF → evaluation
→ one request to the served model, in a fresh working folder; the README table is its `chain_report.json`.

    python benchmarks/run.py --only chain [--write-readme]
    python benchmarks/bench_chain.py --report outputs/chain/chain_report.json --write-readme   # a finished chain
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_chain() -> Path:
    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "openllm", "chain", "--recipes", str(ROOT / "recipes")], cwd=work, env=env,
                   check=True)
    return work / "outputs" / "chain" / "chain_report.json"


def main(write_readme: bool = False, report: str | None = None):
    from readme import machine_description, write_section

    from openllm.chain import markdown_table

    path = Path(report) if report else run_chain()
    result = json.loads(path.read_text())
    if not result.get("complete"):
        raise SystemExit(f"{path} is from an unfinished chain: run `make chain` again to finish it.")
    markdown = (f"`make chain` from scratch: the quickstart model (1.3M parameters) through every stage, CPU only, "
                f"offline (pretraining in bf16 autocast where the CPU has it, post-training in fp32). "
                f"{machine_description()}.\n\n{markdown_table(result)}")
    print(markdown)
    if write_readme:
        write_section("chain", markdown)
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", help="format this finished chain_report.json instead of running the chain")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    main(args.write_readme, args.report)
