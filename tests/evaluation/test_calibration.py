import json
import shutil

import pytest
import torch

from openllm.data.text import load_eval_texts
from openllm.evaluation.calibration import calibrate_model, fit_temperature
from openllm.evaluation.generation import generate
from openllm.evaluation.perplexity import evaluate_model
from openllm.models.loading import load_causal_lm
from openllm_cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def miscalibrated_folder(source, destination, scale: float):
    """A copy of a trained model whose final norm is multiplied by `scale`: every logit is multiplied by it, so the
    model is over-confident (scale > 1) or under-confident (scale < 1) with the same argmax predictions."""
    model, tokenizer = load_causal_lm(str(source), device="cpu")
    with torch.no_grad():
        model.model.norm.weight.mul_(scale)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    return destination


@pytest.fixture(scope="module")
def overconfident(qa_models, tmp_path_factory):
    return miscalibrated_folder(qa_models[0], tmp_path_factory.mktemp("overconfident"), 4.0)


def test_fit_recovers_a_known_temperature():
    # targets drawn from softmax(z / 2.5): the NLL-optimal temperature of the logits z is 2.5
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(5000, 16) * 3
    with torch.no_grad():
        targets = torch.multinomial(torch.softmax(head(hidden) / 2.5, -1), 1).squeeze(-1)
    assert fit_temperature(head, hidden, targets) == pytest.approx(2.5, rel=0.1)


@pytest.mark.parametrize("scale", [4.0, 0.25])
def test_temperature_scaling_lowers_held_out_nll(qa_models, qa_held_out, tmp_path, scale):
    folder = miscalibrated_folder(qa_models[0], tmp_path / "model", scale)
    model, tokenizer = load_causal_lm(str(folder), device="cpu")
    texts, _ = load_eval_texts(str(qa_held_out))
    report = calibrate_model(model, tokenizer, texts)
    before, after = report["before"], report["after"]
    # over-confident logits are cooled (T > 1), under-confident ones sharpened (T < 1)
    assert (report["temperature"] > 2) if scale > 1 else (report["temperature"] < 0.5)
    # measured on texts the temperature was not fitted on
    assert report["eval"]["texts"] == len(texts) - report["fit"]["texts"] > 0
    assert after["nll"] < before["nll"] - 0.05
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"]  # dividing by T > 0 never changes the argmax


def test_calibrate_cli_stores_a_temperature_every_use_of_the_model_applies(overconfident, qa_held_out, tmp_path,
                                                                           capsys):
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(overconfident), "--dataset", str(qa_held_out), "--output-dir", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "calibration.json").read_text()) == report
    assert json.loads((out / "config.json").read_text())["logits_temperature"] == report["temperature"] > 2
    assert (out / "calibration.png").read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((overconfident / "config.json").read_text())["logits_temperature"] == 1.0  # source untouched

    raw, tokenizer = load_causal_lm(str(overconfident), device="cpu")
    calibrated, _ = load_causal_lm(str(out), device="cpu")
    ids = tokenizer("Question: What is 3 + 4?\nAnswer: 7", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(calibrated(ids).logits, raw(ids).logits / report["temperature"])
    # greedy decoding is unchanged; evaluation sees the calibrated distribution: `openllm eval` on the texts the
    # temperature was not fitted on gives the NLL the report promised
    prompt = "Question: What is 3 + 4?\nAnswer:"
    assert generate(calibrated, tokenizer, prompt, greedy=True, max_new_tokens=4) == generate(
        raw, tokenizer, prompt, greedy=True, max_new_tokens=4)
    from openllm.evaluation.calibration import split_texts

    texts, _ = load_eval_texts(str(qa_held_out))
    _, measured = split_texts(texts, 0.5)
    loss = evaluate_model(calibrated, tokenizer, measured, num_samples=0)["metrics"]["loss"]
    assert loss == pytest.approx(report["after"]["nll"], rel=1e-4)

    # calibrating again (in place) fits the raw logits again: nothing changes
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "calibration.png"}
    assert main(["calibrate", str(out), "--dataset", str(qa_held_out)]) == 0
    assert "temperature 1 -> " in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "calibration.png"} == files


def test_calibrate_refreshes_old_modeling_code(overconfident, qa_held_out, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(overconfident, old)
    modeling = old / "modeling_openllm.py"
    assert modeling.is_file()
    modeling.write_text(modeling.read_text().replace("if self.config.logits_temperature != 1.0:", "if False:"))
    out = tmp_path / "new"
    assert main(["calibrate", str(old), "--dataset", str(qa_held_out), "--output-dir", str(out)]) == 0
    assert "if self.config.logits_temperature != 1.0:" in (out / "modeling_openllm.py").read_text()


def test_calibrate_errors_are_clear(overconfident, qa_held_out, tmp_path, capsys):
    assert main(["calibrate", "someone/model", "--dataset", str(qa_held_out)]) == 2
    assert "is not a local model folder" in capsys.readouterr().err
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "Question: What is 1 + 1?\\nAnswer: 2"}\n')
    assert main(["calibrate", str(overconfident), "--dataset", str(one), "--output-dir", str(tmp_path / "x")]) == 2
    assert "needs at least 2 held-out texts" in capsys.readouterr().err
    assert main(["calibrate", str(overconfident), "--dataset", str(qa_held_out), "--fit-fraction", "1",
                 "--output-dir", str(tmp_path / "x")]) == 2
    assert "--fit-fraction must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    assert main(["calibrate", str(llama), "--dataset", str(qa_held_out)]) == 2
    assert "temperature scaling is stored in OpenLLM models only" in capsys.readouterr().err


def test_llama_and_gguf_export_refuse_a_calibrated_model(overconfident, tmp_path):
    from openllm.export import export_gguf
    from openllm.export.convert import convert_checkpoint

    calibrated = tmp_path / "calibrated"
    shutil.copytree(overconfident, calibrated)
    config = json.loads((calibrated / "config.json").read_text())
    (calibrated / "config.json").write_text(json.dumps({**config, "logits_temperature": 2.5}))
    with pytest.raises(ValueError, match=r"logits_temperature=2.5 .* Llama has no such field"):
        convert_checkpoint(calibrated, tmp_path / "llama", to="llama")
    pytest.importorskip("gguf")
    with pytest.raises(ValueError, match=r"logits_temperature=2.5 .* GGUF \(llama.cpp\) has no such field"):
        export_gguf(calibrated, tmp_path / "model.gguf")
    assert not (tmp_path / "llama").exists() and not (tmp_path / "model.gguf").exists()
