"""Every recipe YAML parses with its own script's parser; unknown keys fail; headers say how to launch."""

from pathlib import Path

import pytest
from helpers.recipes import RECIPES, load_recipe

STAGES = {"sft", "dpo", "reward", "rlhf"}  # pretraining configs are checked in test_pretrain.py


def _stage(config: Path) -> str:
    return config.stem.split("_")[0]


CONFIGS = sorted(c for c in RECIPES.glob("*.yaml") if _stage(c) in STAGES)


def test_every_stage_has_a_config_and_a_debug_config():
    stages = {_stage(c) for c in CONFIGS}
    assert stages == STAGES
    assert {c.stem for c in CONFIGS if c.stem.endswith("_debug")} >= {f"{s}_debug" for s in stages}
    assert len([c for c in CONFIGS if not c.stem.endswith("_debug")]) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_with_its_recipe(config):
    recipe = load_recipe(_stage(config))
    gpu = not config.stem.endswith("_debug")
    # GPU configs train in bf16, which TrainingArguments refuses on this CPU: parse them with bf16 switched off
    argv = ["--config", str(config)] + (["--bf16", "false"] if gpu else [])
    script_args, training_args, model_args = recipe.make_parser().parse_args_and_config(argv)
    assert model_args.model_name_or_path and script_args.dataset_name and training_args.output_dir
    header = config.read_text().splitlines()[:4]
    assert header[0].startswith("# ") and any(f"recipes/{_stage(config)}.py --config recipes/{config.name}" in line
                                              for line in header)
    if gpu:
        assert "global batch" in "".join(header).lower() and "\nbf16: true\n" in config.read_text()
    else:  # CPU configs: TRL's bf16 default fails on a CPU
        assert training_args.bf16 is False and "CPU" in header[0] + header[1]


def test_unknown_config_key_fails(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text((RECIPES / "sft_debug.yaml").read_text() + "learning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rat"):
        load_recipe("sft").make_parser().parse_args_and_config(["--config", str(config)])


def test_command_line_overrides_config():
    _, training_args, _ = load_recipe("dpo").make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "dpo_debug.yaml"), "--beta", "0.25"])
    assert training_args.beta == 0.25


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# the CPU debug configs start from `python -m openllm.training.posttrain init-base`, not from a recipe
GPU_CHAIN = [p for p in sorted(RECIPES.glob("*.yaml")) if _stage(p) in STAGES and "debug" not in p.stem]
CHAIN = sorted((RECIPES / "chain").glob("*.yaml"))


@pytest.mark.parametrize("config", GPU_CHAIN + CHAIN, ids=lambda p: str(p.relative_to(RECIPES)))
def test_post_training_configs_read_what_another_recipe_writes(config):
    """Each stage starts from another recipe's output_dir (or a Hub id), so the YAMLs form one chain, and keeps the
    tokenizer of the model it starts from, the pretraining tokenizer."""
    outputs = {_yaml(p).get("output_dir") for p in RECIPES.rglob("*.yaml") if p.parent.name != "accelerate_configs"}
    values = _yaml(config)
    for key in ("model_name_or_path", "reward_model_name_or_path"):
        source = values.get(key)
        if source is None:
            continue
        is_hub_id = not source.startswith(("outputs/", "./", "/")) and source.count("/") == 1
        assert source in outputs or is_hub_id, f"{config.name}: {key}={source!r} is written by no recipe"
        assert source != values["output_dir"]
    assert values.get("tokenizer_name_or_path") in (None, values["model_name_or_path"]), config.name
