import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import openllm
from openllm.data.text import load_eval_texts
from openllm.evaluation.calibration import (
    METHOD_NAMES,
    METHODS,
    calibrate_model,
    calibrated_metrics,
    choose_method,
    cross_validated_nll,
    fit_calibration,
    fit_temperature,
    split_texts,
)
from openllm.evaluation.generation import generate
from openllm.evaluation.perplexity import evaluate_model
from openllm.models.loading import load_causal_lm
from openllm.models.modeling_openllm import beta_calibrate, calibrate_logits
from openllm_cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CALIBRATION_FIELDS = ("logits_temperature", "logits_bias", "beta_calibration")


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


def expected_logits(raw, config: dict):
    """What a model whose config holds the calibration fields `config` must return, from its raw logits."""
    bias = config.get("logits_bias")
    return calibrate_logits(raw, config.get("logits_temperature", 1.0), None if bias is None else torch.tensor(bias),
                            config.get("beta_calibration"))


# ---------------------------------------------------------------------------------------------------------------------
# The fits, on logits whose miscalibration is known
# ---------------------------------------------------------------------------------------------------------------------


def test_fit_recovers_a_known_temperature():
    # targets drawn from softmax(z / 2.5): the NLL-optimal temperature of the logits z is 2.5
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(5000, 16) * 3
    with torch.no_grad():
        targets = torch.multinomial(torch.softmax(head(hidden) / 2.5, -1), 1).squeeze(-1)
    assert fit_temperature(head, hidden, targets) == pytest.approx(2.5, rel=0.1)


def miscalibrated_tokens(head, n: int, kind: str):
    """(hidden, targets) whose next token follows a distribution the logits head(hidden) get wrong in a way no
    temperature fixes: "token_bias" adds a per-token bias the head lacks (it over-predicts some tokens and
    under-predicts others whatever the context), "top1" bends the top-1 probability with a beta map."""
    hidden = torch.randn(n, head.in_features) * 2
    with torch.no_grad():
        logits = head(hidden)
        true = logits + torch.linspace(-2, 2, head.out_features) if kind == "token_bias" else \
            beta_calibrate(logits, 0.3, 2.0, 1.0)
        return hidden, torch.multinomial(torch.softmax(true, -1), 1).squeeze(-1)


@pytest.mark.parametrize("kind, fixed_by", [("token_bias", "platt"), ("top1", "beta")])
def test_platt_and_beta_lower_held_out_nll_where_temperature_cannot(kind, fixed_by):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    folds = [miscalibrated_tokens(head, 1500, kind) for _ in range(2)]
    held_out = miscalibrated_tokens(head, 3000, kind)
    scores = cross_validated_nll(head, folds, METHODS)
    assert choose_method(scores) == fixed_by  # chosen by NLL on folds it was not fitted on
    hidden, targets = torch.cat([h for h, _ in folds]), torch.cat([t for _, t in folds])
    after = {m: calibrated_metrics(head, *held_out, fit_calibration(m, head, hidden, targets)) for m in METHODS}
    # measured on tokens neither the fits nor the choice saw: the best temperature barely helps, the right map does
    assert after["temperature"]["nll"] <= after["none"]["nll"] + 1e-3
    assert after[fixed_by]["nll"] < after["temperature"]["nll"] - 0.2
    if kind == "top1":  # a top-1 miscalibration is what ECE measures
        assert after["beta"]["ece"] < after["temperature"]["ece"] / 3


def test_beta_calibration_keeps_a_distribution_and_maps_the_top1_probability():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 50) * 3
    a, b, c = 0.7, 1.8, -0.4
    out = beta_calibrate(logits, a, b, c)
    probs, new = logits.softmax(-1), out.softmax(-1)
    torch.testing.assert_close(new.sum(-1), torch.ones(4, 6))
    torch.testing.assert_close(out.exp(), new)  # the forward pass returns log-probabilities
    p, top = probs.max(-1)
    expected = 1 / (1 + 1 / (torch.exp(torch.tensor(c)) * p ** a / (1 - p) ** b))
    torch.testing.assert_close(new.gather(-1, top[..., None]).squeeze(-1), expected)
    # the other tokens keep their proportions
    others = torch.ones_like(probs, dtype=torch.bool).scatter(-1, top[..., None], False)
    ratio = (new / probs)[others].view(4, 6, 49)
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))
    torch.testing.assert_close(beta_calibrate(logits, 1.0, 1.0, 0.0), logits.log_softmax(-1))  # the identity map


# ---------------------------------------------------------------------------------------------------------------------
# Calibrating trained models
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [4.0, 0.25])
def test_temperature_scaling_lowers_held_out_nll(qa_models, qa_held_out, tmp_path, scale):
    folder = miscalibrated_folder(qa_models[0], tmp_path / "model", scale)
    model, tokenizer = load_causal_lm(str(folder), device="cpu")
    texts, _ = load_eval_texts(str(qa_held_out))
    report = calibrate_model(model, tokenizer, texts, methods="temperature")
    before, after = report["before"], report["after"]
    assert report["method"] == "temperature" and list(report["methods"]) == ["temperature"]
    temperature = report["config"]["logits_temperature"]
    assert report["methods"]["temperature"]["parameters"] == {"temperature": temperature}
    # over-confident logits are cooled (T > 1), under-confident ones sharpened (T < 1)
    assert (temperature > 2) if scale > 1 else (temperature < 0.5)
    # measured on texts the temperature was not fitted on
    assert report["eval"]["texts"] == len(texts) - report["fit"]["texts"] > 0
    assert after["nll"] < before["nll"] - 0.05
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"]  # dividing by T > 0 never changes the argmax


def test_platt_fixes_a_trained_models_token_bias(qa_models, qa_held_out):
    """A trained model whose output layer over-predicts some tokens and under-predicts others, whatever the context
    (a per-token bias): Platt scaling is chosen, beats the best temperature on texts it never saw, and the model's
    own forward pass, given the fields, scores exactly what the report promised."""
    model, tokenizer = load_causal_lm(str(qa_models[0]), device="cpu")
    torch.manual_seed(0)
    biased = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        biased.weight.copy_(model.lm_head.weight)
        biased.bias.copy_(torch.randn(model.config.vocab_size) * 1.5)
    model.lm_head = biased
    texts, _ = load_eval_texts(str(qa_held_out))
    report = calibrate_model(model, tokenizer, texts)
    methods = report["methods"]
    assert report["method"] == "platt" and set(methods) == {"temperature", "beta", "platt"}
    assert report["after"] == methods["platt"]["after"]
    assert methods["platt"]["after"]["nll"] < min(methods["temperature"]["after"]["nll"],
                                                  methods["beta"]["after"]["nll"]) - 0.1
    assert report["after"]["ece"] < report["before"]["ece"]
    selection = report["selection"]["cross_validated_nll"]
    assert selection["platt"] == min(selection.values())
    assert len(report["config"]["logits_bias"]) == model.config.vocab_size
    for name, value in report["config"].items():
        setattr(model.config, name, value)
    _, measured = split_texts([t for t in texts if t.strip()], 0.5)
    loss = evaluate_model(model, tokenizer, measured, num_samples=0)["metrics"]["loss"]
    assert loss == pytest.approx(report["after"]["nll"], rel=1e-4)


def test_calibrate_cli_stores_the_chosen_calibration_every_use_of_the_model_applies(overconfident, qa_held_out,
                                                                                   tmp_path, capsys):
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(overconfident), "--dataset", str(qa_held_out), "--output-dir", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "calibration.json").read_text()) == report
    assert report["method"] != "none" and set(report["methods"]) == {"temperature", "beta", "platt"}
    for method, result in report["methods"].items():  # ECE before and after every method, on the measured texts
        assert result["after"]["ece"] < report["before"]["ece"], method
    config = json.loads((out / "config.json").read_text())
    assert {name: config[name] for name in CALIBRATION_FIELDS} == report["config"]
    assert (out / "calibration.png").read_bytes()[:8] == PNG_SIGNATURE
    source = json.loads((overconfident / "config.json").read_text())  # source untouched
    assert (source["logits_temperature"], source["logits_bias"], source["beta_calibration"]) == (1.0, None, None)

    raw, tokenizer = load_causal_lm(str(overconfident), device="cpu")
    calibrated, _ = load_causal_lm(str(out), device="cpu")
    ids = tokenizer("Question: What is 3 + 4?\nAnswer: 7", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(calibrated(ids).logits, expected_logits(raw(ids).logits, report["config"]))
    # evaluation sees the calibrated distribution: `openllm eval` on the texts the calibration was not fitted on
    # gives the NLL the report promised
    texts, _ = load_eval_texts(str(qa_held_out))
    _, measured = split_texts(texts, 0.5)
    loss = evaluate_model(calibrated, tokenizer, measured, num_samples=0)["metrics"]["loss"]
    assert loss == pytest.approx(report["after"]["nll"], rel=1e-4)

    # calibrating again (in place) fits the raw logits again: nothing changes
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "calibration.png"}
    assert main(["calibrate", str(out), "--dataset", str(qa_held_out)]) == 0
    assert f"chosen: {METHOD_NAMES[report['method']]} (" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "calibration.png"} == files


def test_temperature_only_calibration_never_changes_greedy_output(overconfident, qa_held_out, tmp_path):
    out = tmp_path / "calibrated"
    assert main(["calibrate", str(overconfident), "--dataset", str(qa_held_out), "--output-dir", str(out),
                 "--methods", "temperature"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["logits_temperature"] > 2 and config["logits_bias"] is None and config["beta_calibration"] is None
    raw, tokenizer = load_causal_lm(str(overconfident), device="cpu")
    calibrated, _ = load_causal_lm(str(out), device="cpu")
    prompt = "Question: What is 3 + 4?\nAnswer:"
    assert generate(calibrated, tokenizer, prompt, greedy=True, max_new_tokens=4) == generate(
        raw, tokenizer, prompt, greedy=True, max_new_tokens=4)


def test_calibrate_refreshes_old_modeling_code(overconfident, qa_held_out, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(overconfident, old)
    modeling = old / "modeling_openllm.py"
    assert modeling.is_file()
    modeling.write_text("# written by an OpenLLM that knew no calibration\n" + modeling.read_text())
    out = tmp_path / "new"
    assert main(["calibrate", str(old), "--dataset", str(qa_held_out), "--output-dir", str(out),
                 "--methods", "temperature"]) == 0
    package = Path(openllm.models.modeling_openllm.__file__)
    assert (out / "modeling_openllm.py").read_text() == package.read_text()


def test_calibrate_errors_are_clear(overconfident, qa_held_out, tmp_path, capsys):
    assert main(["calibrate", "someone/model", "--dataset", str(qa_held_out)]) == 2
    assert "is not a local model folder" in capsys.readouterr().err
    two = tmp_path / "two.jsonl"
    two.write_text('{"text": "Question: What is 1 + 1?\\nAnswer: 2"}\n{"text": "Question: Is 4 even or odd?"}\n')
    assert main(["calibrate", str(overconfident), "--dataset", str(two), "--output-dir", str(tmp_path / "x")]) == 2
    assert "needs at least 3 held-out texts" in capsys.readouterr().err
    for flags, message in ((["--fit-fraction", "1"], "--fit-fraction must be between 0 and 1"),
                           (["--methods", "temperature,isotonic"], "Unknown calibration method(s) isotonic"),
                           (["--folds", "1"], "--folds must be at least 2")):
        assert main(["calibrate", str(overconfident), "--dataset", str(qa_held_out), "--output-dir",
                     str(tmp_path / "x"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    assert main(["calibrate", str(llama), "--dataset", str(qa_held_out)]) == 2
    assert "calibration is stored in OpenLLM models only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`logits_bias` must hold one finite number per token"):
        openllm.OpenLLMConfig(vocab_size=4, logits_bias=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"`beta_calibration` must be \[a, b, c\]"):
        openllm.OpenLLMConfig(beta_calibration=[-1.0, 1.0, 0.0])
    resized = tiny_model(**CALIBRATIONS["platt"])
    resized.resize_token_embeddings(104)
    with pytest.raises(ValueError, match="has 99 values but the model predicts 104 tokens"):
        resized(torch.tensor([[3, 4, 5]]))


# ---------------------------------------------------------------------------------------------------------------------
# Stored with the model: old folders unchanged, new ones applied wherever the model is loaded
# ---------------------------------------------------------------------------------------------------------------------


def tiny_model(**overrides):
    config = openllm.OpenLLMConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return openllm.OpenLLMForCausalLM(config).eval()


CALIBRATIONS = {
    "temperature": {"logits_temperature": 2.5},
    "platt": {"logits_temperature": 0.8, "logits_bias": torch.linspace(-3, 3, 99).tolist()},
    "beta": {"beta_calibration": [0.6, 1.7, 0.3]},
}


def test_a_folder_saved_before_calibration_fields_existed_computes_the_same_logits(tmp_path):
    model = tiny_model()
    ids = torch.randint(3, 99, (2, 7))
    with torch.no_grad():
        raw = model.lm_head(model.model(ids).last_hidden_state)
        assert torch.equal(model(ids).logits, raw)  # no calibration step runs at the defaults
    for name, fields in (("uncalibrated", {}), ("temperature", {"logits_temperature": 2.5})):
        folder = tmp_path / name
        model.config.logits_temperature = fields.get("logits_temperature", 1.0)
        model.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        for field in ("logits_bias", "beta_calibration"):  # an older OpenLLM never wrote these
            config.pop(field, None)
        (folder / "config.json").write_text(json.dumps(config))
        loaded = openllm.OpenLLMForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        assert loaded.config.logits_bias is None and loaded.config.beta_calibration is None
        with torch.no_grad():  # bit for bit what the code before these fields computed: raw or raw / T
            expected = raw / 2.5 if fields else raw
            assert torch.equal(loaded(ids).logits, expected)


def test_calibration_survives_save_and_remote_code_load_without_openllm(tmp_path):
    """Every method, saved with the model, is applied by the folder's own code where `openllm` cannot be imported,
    on this transformers (the tests run on 5.x and on 4.57)."""
    ids = torch.randint(3, 99, (2, 7))
    for method, fields in CALIBRATIONS.items():
        model = tiny_model(**fields)
        with torch.no_grad():
            raw = model.lm_head(model.model(ids).last_hidden_state)
            expected = expected_logits(raw, fields)
            torch.testing.assert_close(model(ids).logits, expected, atol=0, rtol=0)
        model.save_pretrained(tmp_path / method)
        native = openllm.OpenLLMForCausalLM.from_pretrained(tmp_path / method, attn_implementation="eager").eval()
        with torch.no_grad():
            torch.testing.assert_close(native(ids).logits, expected, atol=0, rtol=0)
        torch.save({"ids": ids, "logits": expected}, tmp_path / method / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openllm"] = None  # any `import openllm` now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        for method in {list(CALIBRATIONS)!r}:
            folder = {str(tmp_path)!r} + "/" + method
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True,
                                                         attn_implementation="eager").eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            data = torch.load(folder + "/expected.pt")
            with torch.no_grad():
                torch.testing.assert_close(model(data["ids"]).logits, data["logits"], atol=0, rtol=0)
                model.generate(data["ids"], attention_mask=torch.ones_like(data["ids"]), max_new_tokens=3,
                               do_sample=False, pad_token_id=0)
            print("OK", method)
    """)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [word for method in CALIBRATIONS for word in ("OK", method)]


@pytest.mark.parametrize("method, message", [
    ("temperature", r"logits_temperature=2.5 .* {} has no such field"),
    ("platt", r"Platt scaling .* logits_temperature=0.8 and adds a per-token logits_bias, and {} has no such field"),
    ("beta", r"beta calibration \(beta_calibration=\[0.6, 1.7, 0.3\].* and {} has no such field"),
])
def test_llama_and_gguf_export_refuse_a_calibrated_model(overconfident, tmp_path, method, message):
    from openllm.export import export_gguf
    from openllm.export.convert import convert_checkpoint

    calibrated = tmp_path / "calibrated"
    shutil.copytree(overconfident, calibrated)
    config = json.loads((calibrated / "config.json").read_text())
    fields = dict(CALIBRATIONS[method])
    if "logits_bias" in fields:
        fields["logits_bias"] = [0.5] * config["vocab_size"]
    (calibrated / "config.json").write_text(json.dumps({**config, **fields}))
    with pytest.raises(ValueError, match=message.format("Llama")):
        convert_checkpoint(calibrated, tmp_path / "llama", to="llama")
    pytest.importorskip("gguf")
    with pytest.raises(ValueError, match=message.format(r"GGUF \(llama.cpp\)")):
        export_gguf(calibrated, tmp_path / "model.gguf")
    assert not (tmp_path / "llama").exists() and not (tmp_path / "model.gguf").exists()
