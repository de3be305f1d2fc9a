"""The `openllm` command: bad input ends with one line saying what to fix, and exit status 2."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from openllm.resources import resolve_recipe
from openllm_cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("argv, message", [
    (["viz", "attention", "/no/such/model", "--prompt", "hi", "--out", "a.png"],
     "Model folder '/no/such/model' does not exist"),
    (["generate", "./missing", "--prompt", "hi"], "Model folder './missing' does not exist"),
    (["tokenizer", "train", "--corpus", "/no/such.txt", "--output", "/tmp/unused"], "No file or folder matches"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("OPENLLM_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"openllm {argv[0]}: error: " in err and message in err and "Traceback" not in err


def test_debug_variable_shows_the_exception(monkeypatch):
    monkeypatch.setenv("OPENLLM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["generate", "/no/such/model", "--prompt", "hi"])


def test_help_lists_the_chain_in_order_without_importing_torch():
    code = ("import sys\nfrom openllm_cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    chain = ["tokenizer", "pretrain", "sft", "reward", "dpo", "rlhf", "chain", "merge", "eval", "generate", "serve",
             "export", "convert", "presets"]
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and line.split()
              and line.split()[0] in chain]
    assert listed == chain
    assert out.stdout.strip().endswith("no torch")


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "dpo", "rlhf"])
def test_stage_command_parses_like_its_recipe(stage, monkeypatch):
    """`openllm STAGE --config ... --key value` hands `main` what `python recipes/STAGE.py ...` hands it."""
    from helpers.recipes import RECIPES, load_recipe

    config = RECIPES / ("pretrain_quickstart.yaml" if stage == "pretrain" else f"{stage}_debug.yaml")
    argv = ["--config", str(config), "--learning_rate", "0.123", "--output_dir", "/tmp/unused"]
    recipe = load_recipe(stage)
    module = importlib.import_module(f"openllm.training.{stage}")
    assert recipe.main is module.main and recipe.make_parser is module.make_parser  # one code path
    expected = recipe.make_parser().parse_args_and_config(list(argv))
    got = []
    monkeypatch.setattr(module, "main", lambda *args: got.append(args))
    assert main([stage, *argv]) == 0
    def shown(parsed):  # transformers 4.57 stamps its default logging_dir with the second it was parsed at
        return [re.sub(r"logging_dir='[^']*', ", "", repr(a)) for a in parsed]

    assert shown(got[0]) == shown(expected)
    assert [a.learning_rate for a in got[0] if hasattr(a, "learning_rate")] == [0.123]


def _python(code: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_import_openllm_registers_the_auto_classes():
    out = _python("import openllm\nfrom transformers import AutoConfig, AutoModelForCausalLM\n"
                  "config = AutoConfig.for_model('openllm', hidden_size=32, num_hidden_layers=1, "
                  "num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, vocab_size=50)\n"
                  "print(type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["OpenLLMConfig", "OpenLLMForCausalLM"]


@pytest.mark.parametrize("argv, module, line", [
    (["sft", "--config", "sft_debug.yaml"], "trl", "openllm sft: needs trl, which is not installed: pip install "
                                                   "'openllm-hf[train]'"),
    (["serve", "MODEL"], "uvicorn", "openllm serve: needs uvicorn, which is not installed: pip install "
                                    "'openllm-hf[serve]'"),
    (["chain"], "trl", "openllm chain: needs trl, which is not installed: pip install 'openllm-hf[train]' (or "
                       "'openllm-hf[train,serve]' for everything this command can do)"),
])
def test_a_missing_extra_is_named_in_one_line(argv, module, line, tmp_path):
    """Without an optional dependency (the serve extra is absent in the transformers-4.57 environment; where one is
    installed it is hidden here as if it were not), the command says which extra to install instead of a traceback."""
    code = ("import sys, importlib.util\n"
            f"if importlib.util.find_spec({module!r}):\n    sys.modules[{module!r}] = None  # as if not installed\n"
            "from openllm_cli import main\n"
            f"sys.exit(main({argv!r}))")
    out = _python(code, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [line]


def test_config_names_a_shipped_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("pretrain_quickstart.yaml").endswith("recipes/pretrain_quickstart.yaml")
    assert resolve_recipe("chain/sft").endswith("recipes/chain/sft.yaml")
    (tmp_path / "pretrain_quickstart.yaml").write_text("max_steps: 1\n")
    assert resolve_recipe("pretrain_quickstart.yaml") == "pretrain_quickstart.yaml"  # a local file wins
    with pytest.raises(FileNotFoundError, match="No recipe 'nope.yaml'.*pretrain_quickstart.yaml"):
        resolve_recipe("nope.yaml")
