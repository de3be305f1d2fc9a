"""Llama, Mixtral and GGUF have no place for the epistemic head: converting or exporting leaves it out, says so, and
keeps the logits (the head never changed them)."""

import logging

import gguf
import pytest
import torch
from tiny_checkpoints import make_checkpoint
from transformers import AutoModelForCausalLM

from openllm.export import export_gguf
from openllm.export.convert import convert_checkpoint

HEAD = {"index_dim": 4, "hidden_size": 16, "top_k": 5}


@pytest.mark.parametrize("preset, target", [("tiny", "llama"), ("tiny-moe", "mixtral")])
def test_conversion_drops_the_head_with_a_message(tmp_path, caplog, preset, target):
    src = make_checkpoint(tmp_path / "src", preset=preset, epistemic_head=HEAD)
    with caplog.at_level(logging.WARNING, logger="openllm.export.convert"):
        difference = convert_checkpoint(src, tmp_path / target, to=target)
    assert difference <= 1e-5
    assert "no place for this model's epistemic head, so it is left out" in caplog.text
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / target)
    assert converted.config.model_type == target and not hasattr(converted.config, "epistemic_head")
    assert not [k for k in converted.state_dict() if "epistemic" in k]
    source = AutoModelForCausalLM.from_pretrained(src)
    assert source.epistemic_head is not None
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, source(ids).logits, atol=1e-5, rtol=0)


def test_gguf_export_drops_the_head_with_a_message(tmp_path, caplog):
    src = make_checkpoint(tmp_path / "src", epistemic_head=HEAD)
    with caplog.at_level(logging.WARNING, logger="openllm.export.convert"):
        out = export_gguf(src, tmp_path / "model.gguf", dtype="f32")
    assert "GGUF (llama.cpp) has no place for this model's epistemic head" in caplog.text
    names = [t.name for t in gguf.GGUFReader(out).tensors]
    assert "token_embd.weight" in names and not [n for n in names if "epistemic" in n]


@pytest.mark.onnx
def test_onnx_export_drops_the_head_with_a_message(tmp_path, caplog):
    pytest.importorskip("optimum.exporters.onnx")
    import onnx

    from openllm.export import export_onnx

    src = make_checkpoint(tmp_path / "src", epistemic_head=HEAD)
    with caplog.at_level(logging.WARNING, logger="openllm.export.convert"):
        out = export_onnx(src, tmp_path / "onnx")  # optimum checks the graph's outputs against PyTorch's
    assert "The ONNX graph has no place for this model's epistemic head" in caplog.text
    graph = onnx.load(str(out / "model.onnx")).graph
    assert graph.initializer and not [t.name for t in graph.initializer if "epistemic" in t.name]
