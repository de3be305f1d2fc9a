"""The epistemic head (`OpenLLMEpistemicHead`): inert when off, never changes the logits when on, an exact split of
the whole vocabulary's uncertainty, and a part of the checkpoint that loads with and without openllm."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from openllm import OpenLLMConfig, OpenLLMForCausalLM

VOCAB = 99
HEAD = {"index_dim": 4, "hidden_size": 16, "top_k": 5, "num_samples": 8}


def tiny_config(**overrides) -> OpenLLMConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return OpenLLMConfig(**{**kwargs, **overrides})


@pytest.fixture
def ids():
    return torch.randint(3, VOCAB, (3, 9))


def test_off_by_default_adds_nothing(ids):
    torch.manual_seed(0)
    plain = OpenLLMForCausalLM(tiny_config()).eval()
    assert plain.config.epistemic_head is None and plain.epistemic_head is None
    assert not [k for k in plain.state_dict() if not k.startswith(("model.", "lm_head."))]

    with_head = OpenLLMForCausalLM(tiny_config(epistemic_head=HEAD)).eval()
    head_keys = {"epistemic_head.learnable_in", "epistemic_head.learnable_out", "epistemic_head.prior_in",
                 "epistemic_head.prior_out"}
    assert set(with_head.state_dict()) - set(plain.state_dict()) == head_keys
    missing, unexpected = with_head.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == head_keys and not unexpected
    # the head only reads: the logits, the loss and generation are the plain model's, bit for bit
    a, b = plain(ids, labels=ids), with_head(ids, labels=ids, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    greedy = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(ids, **greedy), with_head.generate(ids, **greedy))
    # and only its learnable network is trainable: the prior is a buffer
    assert [n for n, _ in with_head.epistemic_head.named_parameters()] == ["learnable_in", "learnable_out"]


def test_config_checks_the_head():
    assert tiny_config(epistemic_head={}).epistemic_head["num_samples"] == 16  # defaults filled in
    with pytest.raises(ValueError, match="unknown keys"):
        tiny_config(epistemic_head={"index_size": 4})
    with pytest.raises(ValueError, match="positive integers"):
        tiny_config(epistemic_head={"top_k": 0})


def full_vocabulary_split(head, hidden, logits, index):
    """The split computed the long way: each index's distribution over the whole vocabulary, then deep ensembles'
    formulas, as `ensemble_uncertainty` computes them."""
    bucket_logits, _, top_ids = head.buckets(logits)
    log_probs = head.index_log_probs(hidden, bucket_logits, index)  # (K, ..., k+1)
    rest = torch.log_softmax(logits.float().scatter(-1, top_ids, float("-inf")), -1)  # within the rest
    full = (rest + log_probs[..., -1:]).scatter(-1, top_ids.expand(len(index), *top_ids.shape),
                                                 log_probs[..., :-1])  # (K, ..., vocab)
    assert torch.allclose(full.logsumexp(-1), torch.zeros(()), atol=1e-5)  # distributions over the vocabulary

    def entropy(lp):
        return -(lp.exp() * lp.clamp_min(-1e30)).sum(-1)

    total = entropy(full.logsumexp(0) - math.log(len(index)))
    aleatoric = entropy(full).mean(0)
    return torch.stack([total, aleatoric, total - aleatoric], -1)


@pytest.mark.parametrize("prior_scale", [1.0, 8.0])
def test_split_is_exact_over_the_whole_vocabulary(ids, prior_scale):
    model = OpenLLMForCausalLM(tiny_config(epistemic_head={**HEAD, "prior_scale": prior_scale})).eval()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        head = model.epistemic_head
        hidden = head.features(out.hidden_states)
        u = head(hidden, out.logits)
        assert u.shape == (3, 9, 3)
        torch.testing.assert_close(u, full_vocabulary_split(head, hidden, out.logits, head.sample_index()),
                                   atol=1e-5, rtol=1e-5)
        assert torch.allclose(u[..., 0], u[..., 1] + u[..., 2], atol=1e-6) and (u[..., 2] > 1e-4).all()
        # every index at zero is the model alone: no epistemic part, the model's own predictive entropy
        entropy = -(out.logits.softmax(-1) * out.logits.log_softmax(-1)).sum(-1)
        still = head(hidden, out.logits, torch.zeros(4, HEAD["index_dim"]))
        torch.testing.assert_close(still[..., 0], entropy, atol=1e-5, rtol=0)
        assert still[..., 2].abs().max() < 1e-5
    # a larger prior disagrees more: the epistemic part grows with prior_scale
    if prior_scale > 1:
        head.prior_scale = 1.0
        assert u[..., 2].mean() > 4 * head(hidden, out.logits)[..., 2].mean()


def test_head_survives_save_and_load_with_and_without_openllm(ids, tmp_path):
    model = OpenLLMForCausalLM(tiny_config(epistemic_head=HEAD)).eval()
    with torch.no_grad():
        model.epistemic_head.learnable_out.normal_()  # a trained-looking head, not its zero init
        out = model(ids, output_hidden_states=True)
        expected = model.epistemic_head(model.epistemic_head.features(out.hidden_states), out.logits)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.epistemic_head == model.config.epistemic_head
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.save({"ids": ids, "uncertainty": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openllm"] = None  # any `import openllm` now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            out = model(data["ids"], output_hidden_states=True)
            got = model.epistemic_head(model.epistemic_head.features(out.hidden_states), out.logits)
        torch.testing.assert_close(got, data["uncertainty"], atol=1e-6, rtol=0)
        print("OK", type(model.epistemic_head).__name__)
    """)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK OpenLLMEpistemicHead")
