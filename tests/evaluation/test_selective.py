import json
import math

import pytest
import torch
from helpers.tiny_lm import CORPUS

from openllm.evaluation.confidence import risk_coverage, sequence_confidence, should_abstain
from openllm.evaluation.generation import generate, generate_with_confidence, load_causal_lm
from openllm.evaluation.perplexity import evaluate_model
from openllm_cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT = "Question: What is 12 + 7?\nAnswer:"


def test_sequence_confidence_and_risk_coverage_by_hand():
    c = sequence_confidence([math.log(0.5), math.log(0.8), math.log(0.2)], [1.0, 0.5, 1.5])
    assert c.tokens == 3 and c.min_logprob == pytest.approx(math.log(0.2))
    assert c.confidence == pytest.approx((0.5 * 0.8 * 0.2) ** (1 / 3)) and c.mean_entropy == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be <= 0"):
        sequence_confidence([0.3, 0.9])

    curve = risk_coverage([0.9, 0.6, 0.8, 0.7], [1, 0, 1, 0])  # ranked: right, right, wrong, wrong
    assert curve["risk"] == pytest.approx([0, 0, 1 / 3, 1 / 2])
    assert curve["aurc"] == pytest.approx((1 / 3 + 1 / 2) / 4) == curve["oracle_aurc"]
    assert curve["random_aurc"] == 0.5 and curve["accuracy"] == 0.5
    worst = risk_coverage([0.6, 0.9, 0.7, 0.8], [1, 0, 1, 0])  # wrong answers ranked first
    assert worst["aurc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    # ties give no credit for the order the answers came in
    assert risk_coverage([0.5, 0.5], [1, 0])["aurc"] == pytest.approx((1 + 1 / 2) / 2)


def test_abstention_triggers_exactly_below_the_threshold(qa_models, capsys):
    model, tokenizer = load_causal_lm(str(qa_models[0]), device="cpu")
    kept = generate_with_confidence(model, tokenizer, PROMPT, greedy=True, max_new_tokens=8)
    c = kept.confidence.confidence
    assert 0 < c < 1 and kept.finish_reason in ("stop", "length") and kept.message is None
    assert kept.text == generate(model, tokenizer, PROMPT, greedy=True, max_new_tokens=8)
    # the token log-probabilities are the model's own: a teacher-forced pass over prompt + completion agrees
    prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    ids = torch.cat([prompt_ids, torch.tensor([kept.token_ids])], 1)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, prompt_ids.shape[1] - 1:-1], -1)
    expected = logprobs.gather(-1, torch.tensor(kept.token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(kept.token_logprobs), expected, atol=1e-5, rtol=0)

    at = generate_with_confidence(model, tokenizer, PROMPT, greedy=True, max_new_tokens=8, abstain_below=c)
    below = generate_with_confidence(model, tokenizer, PROMPT, greedy=True, max_new_tokens=8,
                                     abstain_below=math.nextafter(c, 0))
    above = generate_with_confidence(model, tokenizer, PROMPT, greedy=True, max_new_tokens=8,
                                     abstain_below=math.nextafter(c, 1))
    assert at.text == below.text == kept.text and at.finish_reason == below.finish_reason == kept.finish_reason
    assert above.finish_reason == "abstain" and above.text == "" and above.withheld == kept.text
    assert f"({c:.4f}, the geometric mean of its token probabilities) is below the threshold" in above.message
    assert [should_abstain(c, t) for t in (math.nextafter(c, 0), c, math.nextafter(c, 1))] == [False, False, True]

    base = ["generate", str(qa_models[0]), "--prompt", PROMPT, "--greedy", "--max-new-tokens", "8"]
    assert main(base + ["--abstain-below", repr(math.nextafter(c, 1))]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "finish_reason: abstain" in err and "Abstained:" in err
    assert main(base + ["--abstain-below", repr(c)]) == 0
    out, err = capsys.readouterr()
    assert out == PROMPT + kept.text + "\n" and f"finish_reason: {kept.finish_reason}; confidence {c:.4f}" in err
    assert main(base + ["--abstain-below", "1.5"]) == 2
    assert "threshold is a probability in [0, 1]" in capsys.readouterr().err


def test_confidence_ranks_answers_better_than_random(qa_models, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", str(qa_models[0]), "--answers", "openllm:mix", "--answers-size", "90", "--json",
                 "--output-dir", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)["answers"]
    rows = report["answers"]
    assert report["questions"] == len(rows) == 90
    assert report["accuracy"] == sum(r["correct"] for r in rows) / 90
    assert 0.05 < report["accuracy"] < 0.95  # some answers right and some wrong, so the ranking matters
    assert report["oracle_aurc"] < report["aurc"] < report["random_aurc"] - 0.05
    assert (out / "risk_coverage.png").read_bytes()[:8] == PNG_SIGNATURE


def test_eval_reports_per_text_confidence(tiny_model_dir):
    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    results = evaluate_model(model, tokenizer, CORPUS[:6], block_size=8, stride=3, num_samples=0)
    sequences, d = results["sequences"], results["dataset"]
    assert [s["index"] for s in sequences] == list(range(6))
    assert sum(s["tokens"] for s in sequences) == d["tokens"]
    total = sum(s["mean_logprob"] * s["tokens"] for s in sequences)
    assert -total / d["tokens"] == pytest.approx(results["metrics"]["loss"], rel=1e-6)
    for s, text in zip(sequences, CORPUS[:6]):
        ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        assert s["tokens"] == len(ids) - 1 and s["min_logprob"] <= s["mean_logprob"] < 0
        assert s["confidence"] == pytest.approx(math.exp(s["mean_logprob"]))
