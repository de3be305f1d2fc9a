"""Each model/optimizer option on the quickstart recipe, one at a time, against the recipe as it is.

Every variant trains from the same seed, tokenizer (trained deterministically on the same split) and data for the
same number of optimizer steps (the recipe's `max_steps` unless `--steps` says otherwise). The table reports held-out
loss and perplexity, and tokens/s relative to the baseline, so equal-wall-time comparisons follow (a variant at 0.9×
the speed gets 0.9× the steps in the same time).

    python benchmarks/bench_recipe_options.py [--steps 600] [--write-readme]
    python benchmarks/run.py --only recipe_options
"""

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
RECIPE = ROOT / "recipes" / "pretrain_quickstart.yaml"

# name → (model_config_overrides added to the recipe's, training-argument overrides)
VARIANTS = {
    "recipe as is": ({}, {}),
    "optim: muon": ({}, {"optim": "muon"}),
    "qk_norm": ({"qk_norm": True}, {}),
    "zero_init_output_projections": ({"zero_init_output_projections": True}, {}),
    "final_logit_softcapping: 30": ({"final_logit_softcapping": 30.0}, {}),
    "untied head": ({"tie_word_embeddings": False}, {}),
}


def train(name: str, steps: int | None, work: Path) -> dict:
    from openllm.training.pretrain import make_parser, pretrain

    model_overrides, training_overrides = VARIANTS[name]
    argv = ["--config", str(RECIPE), "--output_dir", str(work / "run"), "--disable_tqdm", "true",
            "--save_strategy", "no", "--final_eval_documents", "0", "--eval_strategy", "no"]
    if steps:
        argv += ["--max_steps", str(steps)]
    for key, value in training_overrides.items():
        argv += [f"--{key}", str(value)]
    data_args, model_args, training_args = make_parser().parse_args_and_config(argv)[:3]
    model_args.model_config_overrides = {**(model_args.model_config_overrides or {}), **model_overrides}
    shutil.rmtree(work / "run", ignore_errors=True)
    summary = pretrain(data_args, model_args, training_args)
    return {"variant": name, "eval_loss": summary["metrics"]["eval_loss"],
            "perplexity": summary["metrics"]["perplexity"], "steps": summary["training_args"]["max_steps"],
            "tokens_per_s": summary["metrics"]["tokens_seen"] / summary["train_runtime_s"],
            "train_loss": summary["metrics"]["train_loss"]}


def render(rows) -> str:
    from readme import machine_description

    base = rows[0]
    lines = [f"Quickstart recipe options, one at a time ({machine_description()}): {base['steps']} optimizer steps "
             "each from the same seed, tokenizer and data; held-out loss on the recipe's held-out documents.", "",
             "| variant | held-out loss | perplexity | mean train loss | tokens/s vs recipe |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['eval_loss']:.4f} | {r['perplexity']:.2f} | {r['train_loss']:.4f} "
                     f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f}× |")
    return "\n".join(lines)


def main(write_readme: bool = False, steps: int | None = None, only: list[str] | None = None):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in only or VARIANTS:
            rows.append(train(name, steps, work))
            print(json.dumps(rows[-1]), flush=True)
    assert all(math.isfinite(r["eval_loss"]) for r in rows)
    table = render(rows)
    print(table)
    if write_readme:
        from readme import write_section

        write_section("recipe_options", table)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="optimizer steps per variant (default: the recipe's max_steps)")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    main(write_readme=args.write_readme, steps=args.steps, only=args.only)
