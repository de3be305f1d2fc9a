import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from helpers.tiny_lm import CORPUS

from openllm.evaluation.perplexity import evaluate_model, sliding_windows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BigramLM(torch.nn.Module):
    """Next-token logits depend only on the current token, through a fixed table: exact numbers are computable by
    hand, and they must not change with the window size or stride."""

    def __init__(self, vocab_size, context=64):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size) * 2)
        self.config = SimpleNamespace(max_position_embeddings=context)

    @property
    def device(self):
        return self.table.device

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids])


def by_hand(model, tokenizer, texts):
    """Reference numbers from an independent, loop-based computation."""
    nll, n, brier, confidences, correct = 0.0, 0, 0.0, [], []
    table = torch.softmax(model.table.detach().double(), -1)
    for text in texts:
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for prev, target in itertools.pairwise(ids):
            probs = table[prev]
            nll -= math.log(probs[target])
            one_hot = torch.zeros_like(probs)
            one_hot[target] = 1
            brier += float(((probs - one_hot) ** 2).sum())
            confidences.append(float(probs.max()))
            correct.append(int(probs.argmax()) == target)
            n += 1
    ece = 0.0
    for b in range(15):
        members = [i for i, c in enumerate(confidences) if b / 15 < c <= (b + 1) / 15 or (b == 0 and c == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidences[i] for i in members) / len(members)
            ece += len(members) / n * abs(acc - conf)
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"tokens": n, "bytes": num_bytes, "loss": nll / n, "perplexity": math.exp(nll / n),
            "bits_per_byte": nll / (num_bytes * math.log(2)), "brier": brier / n, "ece": ece,
            "accuracy": sum(correct) / n}


@pytest.mark.parametrize("block_size,stride", [(64, 32), (6, 2), (5, 4), (2, 1)])
def test_exact_numbers_on_a_bigram_model(tokenizer, block_size, stride):
    model = BigramLM(len(tokenizer))
    texts = CORPUS[:6]
    expected = by_hand(model, tokenizer, texts)
    results = evaluate_model(model, tokenizer, texts, block_size=block_size, stride=stride, batch_size=3,
                             num_samples=0)
    m, d = results["metrics"], results["dataset"]
    assert (d["tokens"], d["bytes"]) == (expected["tokens"], expected["bytes"])
    assert d["bytes"] > sum(len(t) for t in texts)  # non-ASCII characters count as several bytes
    for key in ("loss", "perplexity", "bits_per_byte", "brier", "ece", "accuracy"):
        assert m[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    assert m["bits_per_byte"] == pytest.approx(m["loss"] * d["tokens"] / (d["bytes"] * math.log(2)))


def test_uniform_model_gives_closed_form_numbers(tokenizer):
    import openllm

    model = openllm.OpenLLMForCausalLM(openllm.get_preset_config("tiny", vocab_size=len(tokenizer))).eval()
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: a uniform next-token distribution
    vocab = len(tokenizer)
    results = evaluate_model(model, tokenizer, CORPUS[:3], block_size=16, num_samples=0)
    m, d = results["metrics"], results["dataset"]
    assert m["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(d["tokens"] * math.log2(vocab) / d["bytes"], rel=1e-5)
    assert m["brier"] == pytest.approx(1 - 1 / vocab, rel=1e-5)
    # ties break to token 0 (the pad token), which never occurs in the text: confidence 1/V, accuracy 0
    assert m["accuracy"] == 0
    assert m["ece"] == pytest.approx(1 / vocab, rel=1e-5)


def test_single_window_matches_the_models_own_loss(tokenizer):
    import openllm

    model = openllm.OpenLLMForCausalLM(openllm.get_preset_config("tiny", vocab_size=len(tokenizer))).eval()
    text = CORPUS[1]
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss.item()
    results = evaluate_model(model, tokenizer, [text], block_size=64, num_samples=0)
    assert results["metrics"]["loss"] == pytest.approx(reference, rel=1e-5)
    assert results["dataset"]["tokens"] == ids.shape[1] - 1


@pytest.mark.parametrize("length,block_size,stride", [(2, 4, 2), (10, 4, 1), (10, 4, 3), (37, 8, 4), (9, 9, 8)])
def test_sliding_windows_score_every_token_once(length, block_size, stride):
    windows = sliding_windows(length, block_size, stride)
    scored = [t for _, end, first in windows for t in range(first, end)]
    assert scored == list(range(1, length))
    for i, (start, end, first) in enumerate(windows):
        assert end - start <= block_size and start < first
        if i:
            assert first - start >= block_size - stride  # context kept from the previous window


def test_sliding_windows_reject_a_stride_that_leaves_no_context():
    with pytest.raises(ValueError, match=r"stride must be in \[1, block_size - 1\]"):
        sliding_windows(10, 4, 4)


def test_results_files(tokenizer, tmp_path):
    from matplotlib.image import imread

    model = BigramLM(len(tokenizer))
    results = evaluate_model(model, tokenizer, CORPUS[:4], block_size=16, num_samples=0, output_dir=tmp_path)
    png = tmp_path / "reliability.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert imread(png).shape[:2] == (600, 500)
    assert json.loads((tmp_path / "eval_results.json").read_text()) == json.loads(json.dumps(results))
    assert results["reliability_diagram"] == "reliability.png"
    assert sum(b["count"] for b in results["calibration"]["bins"]) == results["dataset"]["tokens"]
