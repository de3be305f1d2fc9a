"""Each model/optimizer option on the quickstart recipe, one at a time, against the recipe as it is, at equal wall
time.

Every variant trains from the same seed, tokenizer (trained deterministically on the same split) and data. It first
runs the recipe's `max_steps` (or `--steps`); a variant whose tokens/s then differ from the recipe's by more than
3% trains again for the steps the recipe's training time buys at its own speed, so every row had the same time.
The table reports held-out loss and perplexity, and the speed relative to the recipe.

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
SPEED_TOLERANCE = 0.03  # variants this close to the recipe's tokens/s keep its steps

# name → (model_config_overrides added to the recipe's, training-argument overrides)
COSINE = {"lr_scheduler_type": "cosine", "lr_scheduler_kwargs": "{}"}
VARIANTS = {
    "recipe as is": ({}, {}),
    "common baseline: AdamW, cosine, lr 1e-3": ({}, {"optim": "adamw_torch_fused", "learning_rate": 1e-3, **COSINE}),
    "AdamW instead of Muon": ({}, {"optim": "adamw_torch_fused"}),
    "cosine instead of WSD": ({}, COSINE),
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
            "tokens_per_step": summary["training_args"]["tokens_per_step"],
            "tokens_per_s": summary["metrics"]["tokens_seen"] / summary["train_runtime_s"],
            "train_loss": summary["metrics"]["train_loss"]}


def render(rows) -> str:
    from readme import machine_description

    base = rows[0]
    lines = [f"Quickstart recipe options, one at a time, at equal wall time ({machine_description()}): the recipe's "
             f"{base['steps']} optimizer steps of {base['tokens_per_step']:,} tokens, and for a variant more than "
             f"{SPEED_TOLERANCE:.0%} faster or slower, the steps its speed fits in the same time; the same seed, "
             "tokenizer and data; held-out loss on the recipe's held-out documents. Speeds are whole-run tokens/s, "
             "which move by a few percent from run to run here: the cosine row computes exactly what the recipe "
             "does.", "",
             "| variant | steps | held-out loss | perplexity | mean train loss | tokens/s vs recipe |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['steps']} | {r['eval_loss']:.4f} | {r['perplexity']:.2f} "
                     f"| {r['train_loss']:.4f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}× |")
    return "\n".join(lines)


def main(write_readme: bool = False, steps: int | None = None, only: list[str] | None = None):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the recipe first: every other row is timed against it
        for name in ["recipe as is"] + [n for n in only or VARIANTS if n != "recipe as is"]:
            row = train(name, steps, work)
            speed = row["tokens_per_s"] / rows[0]["tokens_per_s"] if rows else 1.0
            if abs(speed - 1) > SPEED_TOLERANCE:
                row = train(name, round(rows[0]["steps"] * speed), work)
            rows.append(row)
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
