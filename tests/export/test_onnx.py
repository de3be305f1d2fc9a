import json
import shutil

import pytest
import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer

from openllm.export import check_onnx_environment, export_onnx, load_onnx_model
from openllm_cli import main as cli_main

PROMPTS = ["The quick brown fox", "Numbers like 3.14159, 2718 and"]
NEW_TOKENS = 24


@pytest.mark.parametrize("version", ["4.58.0", "5.0.0", "5.23.0"])
def test_too_new_transformers_says_how_to_install_the_export_environment(version):
    with pytest.raises(RuntimeError) as error:
        check_onnx_environment(version)
    message = str(error.value)
    assert f"transformers {version} is installed" in message
    assert "make install-compat" in message
    assert ".venv-compat/bin/openllm export onnx MODEL OUT" in message


@pytest.mark.skipif(Version(transformers.__version__) < Version("4.58"), reason="the compat env exports for real")
def test_cli_in_the_default_environment_fails_with_the_install_hint(dense_dir, tmp_path, capsys):
    assert cli_main(["export", "onnx", str(dense_dir), str(tmp_path / "onnx")]) == 1
    assert "make install-compat" in capsys.readouterr().out
    assert not (tmp_path / "onnx").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Real exports (transformers 4.57 + optimum-onnx: `make install-compat && make test-compat`)
# ---------------------------------------------------------------------------------------------------------------------


def greedy(model, tokenizer):
    """Greedy continuations of a left-padded batch: exercises the attention mask, positions and the KV cache."""
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return out[:, batch.input_ids.shape[1]:]


@pytest.fixture(scope="module")
def dense_onnx(dense_dir, tmp_path_factory):
    pytest.importorskip("optimum.exporters.onnx")
    out = tmp_path_factory.mktemp("onnx") / "dense"
    assert cli_main(["export", "onnx", str(dense_dir), str(out), "--quantize", "int8"]) == 0
    return out


@pytest.mark.onnx
def test_export_folder_holds_graph_config_tokenizer_and_code(dense_onnx):
    names = {p.name for p in dense_onnx.iterdir()}
    assert {"model.onnx", "model_quantized.onnx", "config.json", "tokenizer.json", "configuration_openllm.py",
            "modeling_openllm.py"} <= names
    import onnx

    graph = onnx.load(dense_onnx / "model.onnx", load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.1.value" in inputs and "present.1.key" in [o.name for o in graph.output]
    kv_heads = graph.input[inputs.index("past_key_values.0.key")].type.tensor_type.shape.dim[1].dim_value
    assert kv_heads == 2  # grouped-query attention: 2 KV heads for 4 query heads


@pytest.mark.onnx
def test_onnxruntime_greedy_tokens_equal_pytorch(dense_dir, dense_onnx):
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    expected = greedy(AutoModelForCausalLM.from_pretrained(dense_dir).eval(), tokenizer)
    ort_model = load_onnx_model(dense_onnx)
    assert ort_model.can_use_cache and ort_model.num_key_value_heads == 2
    got = greedy(ort_model, tokenizer)
    assert len(set(expected[0].tolist())) > 5  # a wandering continuation, not one token repeated
    assert got.tolist() == expected.tolist()


@pytest.mark.onnx
def test_int8_model_runs_and_its_logits_stay_close(dense_dir, dense_onnx):
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    ids = tokenizer(" ".join(PROMPTS) + " and the lazy dog jumps over", return_tensors="pt")
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(dense_dir)(**ids).logits
    fp32 = load_onnx_model(dense_onnx)(**ids).logits
    int8 = load_onnx_model(dense_onnx, quantized=True)(**ids).logits
    torch.testing.assert_close(fp32, reference, atol=1e-4, rtol=1e-4)
    # dynamic int8 rounds weights per output channel and activations per tensor: a few percent of the logit range
    spread = reference.abs().max()
    assert (int8 - reference).abs().max() < 0.1 * spread
    assert (int8 - reference).abs().max() > 1e-4 * spread  # it really is quantized
    agree = (int8.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree >= 0.75


@pytest.mark.onnx
def test_moe_model_exports_and_generates_like_pytorch(moe_dir, tmp_path):
    pytest.importorskip("optimum.exporters.onnx")
    out = export_onnx(moe_dir, tmp_path / "moe")
    tokenizer = AutoTokenizer.from_pretrained(moe_dir)
    expected = greedy(AutoModelForCausalLM.from_pretrained(moe_dir).eval(), tokenizer)
    assert greedy(load_onnx_model(out), tokenizer).tolist() == expected.tolist()


@pytest.mark.onnx
def test_bad_requests_are_refused(dense_dir, dense_onnx, tmp_path):
    with pytest.raises(ValueError, match="supports only 'int8'"):
        export_onnx(dense_dir, tmp_path / "x", quantize="int4")
    with pytest.raises(FileNotFoundError, match="No model_quantized.onnx"):
        load_onnx_model(tmp_path, quantized=True)
    no_code = tmp_path / "no_code"
    shutil.copytree(dense_dir, no_code)
    config = json.loads((no_code / "config.json").read_text())
    del config["auto_map"]
    (no_code / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no modeling code"):
        export_onnx(no_code, tmp_path / "y")


@pytest.mark.onnx
@pytest.mark.parametrize("fields", [{"logits_temperature": 0.8, "logits_bias": "ramp"},
                                    {"beta_calibration": [0.6, 1.7, 0.3]}], ids=["platt", "beta"])
def test_calibration_is_part_of_the_exported_graph(tmp_path, fields):
    """`openllm calibrate`'s Platt and beta scaling happen in the forward pass, so the ONNX graph computes them."""
    pytest.importorskip("optimum.exporters.onnx")
    from tiny_checkpoints import make_checkpoint

    folder = make_checkpoint(tmp_path / "calibrated")
    config = json.loads((folder / "config.json").read_text())
    if fields.get("logits_bias") == "ramp":
        fields = {**fields, "logits_bias": torch.linspace(-3, 3, config["vocab_size"]).tolist()}
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    out = export_onnx(folder, tmp_path / "onnx")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(" ".join(PROMPTS), return_tensors="pt")
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(folder).eval()
        plain = AutoModelForCausalLM.from_pretrained(folder, logits_temperature=1.0, logits_bias=None,
                                                     beta_calibration=None).eval()
        expected, raw = reference(**ids).logits, plain(**ids).logits
    assert (expected - raw).abs().max() > 0.1  # the calibration changes the logits
    torch.testing.assert_close(load_onnx_model(out)(**ids).logits, expected, atol=1e-4, rtol=1e-4)
