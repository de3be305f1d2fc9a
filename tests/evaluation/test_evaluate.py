import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tiny_lm import CORPUS

from openllm.evaluation.perplexity import evaluate_model
from openllm.models.loading import load_causal_lm
from openllm_cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def test_eval_command_imports_alone():
    # a fresh interpreter, so no module imported earlier in the session can hide an import cycle
    code = "import openllm.evaluation.evaluate as e; print(callable(e.add_arguments) and callable(e.run))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_cli_json_matches_the_python_api(tiny_model_dir, eval_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(tiny_model_dir), "--dataset", str(eval_jsonl), "--block-size", "16", "--num-samples", "1"]
    assert main(argv + ["--json", "--output-dir", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "eval_results.json").read_text())
    assert {"model", "dataset", "settings", "metrics", "calibration", "samples", "reliability_diagram",
            "framework_versions", "runtime_s"} <= printed.keys()
    assert printed["dataset"]["name"] == str(eval_jsonl) and printed["dataset"]["texts"] == 6

    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    api = evaluate_model(model, tokenizer, CORPUS[:6], block_size=16, num_samples=1)
    assert printed["metrics"] == pytest.approx(api["metrics"], rel=1e-9)
    assert {k: printed["dataset"][k] for k in ("texts", "tokens", "bytes")} == {
        k: api["dataset"][k] for k in ("texts", "tokens", "bytes")}
    assert printed["settings"] == api["settings"] and printed["samples"] == api["samples"]

    assert main(argv + ["--num-samples", "0"]) == 0
    table = capsys.readouterr().out
    assert f"{api['metrics']['perplexity']:.3f}" in table and f"{api['metrics']['bits_per_byte']:.4f}" in table


def test_cli_errors_are_clear(tiny_model_dir, eval_jsonl, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--dataset", str(eval_jsonl)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--dataset", str(eval_jsonl)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--dataset", str(eval_jsonl), "--text-column", "body"]) == 2
    assert "Column 'body' is not in" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--dataset", str(eval_jsonl), "--block-size", "9999"]) == 2
    assert "exceeds the model's context length 256" in capsys.readouterr().err
