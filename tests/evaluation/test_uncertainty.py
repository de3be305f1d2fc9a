import json

import pytest
from helpers.tiny_lm import CORPUS

from openllm.data.text import load_eval_texts
from openllm.evaluation.perplexity import evaluate_model
from openllm.evaluation.uncertainty import ensemble_uncertainty, shuffled_texts
from openllm.models.loading import load_causal_lm
from openllm_cli import main


def test_identical_members_have_no_epistemic_uncertainty(tiny_model_dir):
    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    twin, _ = load_causal_lm(str(tiny_model_dir), device="cpu")
    u = ensemble_uncertainty([model, twin], tokenizer, CORPUS[:4], block_size=16)
    entropy = evaluate_model(model, tokenizer, CORPUS[:4], block_size=16, num_samples=0)["metrics"]
    assert u["epistemic"] == pytest.approx(0, abs=1e-6)
    assert u["aleatoric"] == pytest.approx(u["total"], rel=1e-6)
    assert u["total"] == pytest.approx(entropy["mean_token_entropy"], rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_uncertainty([model], tokenizer, CORPUS[:1])


def test_epistemic_uncertainty_is_higher_out_of_distribution(qa_models, qa_held_out, task_tokenizer, capsys):
    members = [load_causal_lm(str(folder), device="cpu")[0] for folder in qa_models]
    in_distribution = load_eval_texts(str(qa_held_out), max_samples=40)[0]
    held_out = ensemble_uncertainty(members, task_tokenizer, in_distribution)
    shuffled = ensemble_uncertainty(members, task_tokenizer, shuffled_texts(task_tokenizer, in_distribution))
    other_domain = ensemble_uncertainty(members, task_tokenizer, CORPUS[:5])
    for ood in (shuffled, other_domain):
        assert ood["epistemic"] > 1.5 * held_out["epistemic"] > 0
    # the split is exact: total = aleatoric + epistemic, for the whole set and for every text
    for u, n in ((held_out, 40), (shuffled, 40), (other_domain, 5)):
        assert u["total"] == pytest.approx(u["aleatoric"] + u["epistemic"], rel=1e-9)
        assert len(u["sequences"]) == n and all(s["epistemic"] >= 0 for s in u["sequences"])

    assert main(["eval", str(qa_models[0]), "--dataset", str(qa_held_out), "--max-samples", "40", "--num-samples",
                 "0", "--ensemble", str(qa_models[1]), "--ensemble", str(qa_models[2]), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["uncertainty"]
    assert cli["members"] == 3 and cli["epistemic"] == pytest.approx(held_out["epistemic"], rel=1e-6)
