"""Helpers for the post-training tests: run a recipe in this process, write JSONL data."""

import importlib.util
import json
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(stage: str):
    """The recipe script `recipes/<stage>.py` as a module (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{stage}", RECIPES / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(stage: str, config: str, **overrides):
    """Run `recipes/<stage>.py --config recipes/<config>.yaml --key value ...` in this process; return the
    training_summary.json it wrote and the trainer."""
    recipe = load_recipe(stage)
    argv = ["--config", str(RECIPES / f"{config}.yaml"), "--disable_tqdm", "true"]
    for key, value in overrides.items():
        argv += [f"--{key}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
    script_args, training_args, model_args = recipe.make_parser().parse_args_and_config(argv)
    trainer = recipe.main(script_args, training_args, model_args)
    return json.loads((Path(training_args.output_dir) / "training_summary.json").read_text()), trainer


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
