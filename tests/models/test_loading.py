"""One loader for every command: a model's own code runs only with --trust-remote-code; OpenLLM folders need none."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import openllm
from openllm.models.loading import RemoteCodeError, load_causal_lm, resolve_dtype

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hostile_folder(tmp_path):
    """A model folder whose configuration code writes a file when it is imported."""
    folder, marker = tmp_path / "hostile", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "hostile", "auto_map": {"AutoConfig": "configuration_hostile.HostileConfig",
                                              "AutoModelForCausalLM": "modeling_hostile.HostileForCausalLM"}}))
    (folder / "configuration_hostile.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\nclass HostileConfig(PretrainedConfig):\n"
        "    model_type = 'hostile'\n")
    (folder / "tokenizer.json").write_text("{}")
    return folder, marker


FLAG = "pass --trust-remote-code"


@pytest.mark.parametrize("command, message", [
    (["eval", "{folder}", "--dataset", "{text}"], FLAG),
    (["generate", "{folder}", "--prompt", "hi"], FLAG),
    (["viz", "attention", "{folder}", "--prompt", "hi", "--out", "{tmp}/a.png"], FLAG),
    (["calibrate", "{folder}", "--dataset", "{text}"], "is a 'hostile' model"),  # refused before loading anything
])
def test_commands_do_not_run_a_folders_code_unasked(command, message, hostile_folder, tmp_path):
    folder, marker = hostile_folder
    (tmp_path / "text.txt").write_text("Some held-out text.\n" * 20)
    argv = [a.format(folder=folder, text=tmp_path / "text.txt", tmp=tmp_path) for a in command]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    env.pop("OPENLLM_DEBUG", None)
    out = subprocess.run([sys.executable, "-m", "openllm", *argv], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_remote_code_error_names_the_flag(hostile_folder):
    folder, marker = hostile_folder
    with pytest.raises(RemoteCodeError, match="ships its own Python code.*pass --trust-remote-code"):
        load_causal_lm(str(folder))
    assert not marker.exists()


def test_openllm_folders_load_with_the_installed_classes_without_trust(tiny_model_dir, tmp_path):
    """The folder carries a copy of the modeling code and `auto_map`, yet nothing of it runs: edit the copy so that
    importing it fails, and the model still loads, as the package's own class."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert "auto_map" in json.loads((folder / "config.json").read_text())
    (folder / "modeling_openllm.py").write_text("raise RuntimeError('the folder copy ran')\n")
    model, tokenizer = load_causal_lm(str(folder), device="cpu")
    assert type(model) is openllm.OpenLLMForCausalLM and not model.training
    assert next(model.parameters()).dtype == torch.float32 and tokenizer is not None


def test_one_dtype_rule():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'half'; choose one of auto, float32, bfloat16, float16"):
        resolve_dtype("half", "cpu")


def test_onnx_export_refuses_code_that_is_not_openllms(tiny_model_dir, tmp_path):
    from openllm.export.onnx import check_own_code

    assert check_own_code(tiny_model_dir)  # a folder saved by this openllm: its code is the package's
    folder = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, folder)
    with open(folder / "modeling_openllm.py", "a") as f:
        f.write("\nprint('changed')\n")
    with pytest.raises(RemoteCodeError, match="modeling_openllm.py, which is not the installed openllm's own"):
        check_own_code(folder)
