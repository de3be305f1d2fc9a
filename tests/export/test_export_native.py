"""`openllm export llama|mixtral`: checkpoints that transformers (and so vLLM, SGLang, TGI) load natively."""

import pytest
import torch
from tiny_checkpoints import make_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, MixtralForCausalLM

from openllm_cli import main


@pytest.mark.parametrize("preset, target, cls", [("tiny", "llama", LlamaForCausalLM),
                                                 ("tiny-moe", "mixtral", MixtralForCausalLM)])
def test_cli_export_gives_a_native_checkpoint_with_the_same_logits(tmp_path, preset, target, cls, capsys):
    source = make_checkpoint(tmp_path / "openllm", preset)
    assert main(["export", target, str(source), str(tmp_path / target)]) == 0
    assert f"Wrote a {target} checkpoint" in capsys.readouterr().out
    native = AutoModelForCausalLM.from_pretrained(tmp_path / target, attn_implementation="eager").eval()
    ours = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager").eval()
    assert type(native) is cls and not (tmp_path / target / "modeling_openllm.py").exists()
    ids = AutoTokenizer.from_pretrained(tmp_path / target)("Language models predict", return_tensors="pt").input_ids
    torch.testing.assert_close(native(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)


def test_cli_export_refuses_the_wrong_family_and_missing_folders(tmp_path, capsys):
    source = make_checkpoint(tmp_path / "openllm", "tiny")
    assert main(["export", "mixtral", str(source), str(tmp_path / "out")]) == 2
    assert "openllm export: error:" in capsys.readouterr().err
    assert main(["export", "gguf", str(tmp_path / "nope"), str(tmp_path / "x.gguf")]) == 2
    assert "does not exist" in capsys.readouterr().err
