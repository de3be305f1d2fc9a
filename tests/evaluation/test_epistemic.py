import json

import pytest
import torch
from helpers.tiny_lm import CORPUS

from openllm.data.text import load_eval_texts
from openllm.evaluation.epistemic import REPORT_FILE
from openllm.evaluation.metrics import auroc
from openllm.evaluation.perplexity import evaluate_model
from openllm.evaluation.uncertainty import head_uncertainty, shuffled_texts
from openllm.models.loading import load_causal_lm
from openllm.tasks import make_task_examples
from openllm_cli import main


def test_auroc():
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0 and auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert auroc([1.0, 2.0], [1.0, 2.0]) == 0.5 and auroc([0.1, 0.5], [0.3, 0.6]) == 0.75


@pytest.fixture
def one_thread():
    """Models this small run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_head_tells_out_of_domain_text_apart(qa_models, qa_held_out, task_tokenizer, tmp_path, capsys,
                                                     one_thread):
    """On a tiny model trained on the synthetic questions: a head trained on its training texts (the model frozen)
    scores held-out questions low and shuffled tokens or English prose high, and changes none of the model's
    numbers."""
    train = tmp_path / "train.jsonl"
    rows = [{"text": f"Question: {e['prompt']}\nAnswer: {e['answer']}"} for e in make_task_examples(n=200)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "with-head"
    assert main(["epistemic-head", str(qa_models[0]), "--dataset", str(train), "--output-dir", str(out),
                 "--steps", "200", "--device", "cpu"]) == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["training"]["excess_nll_last"] < 0.25 * report["training"]["excess_nll_first"]
    assert report["check"]["auroc_shuffled"] > 0.9  # on the 30 training texts it kept out

    model, _ = load_causal_lm(str(out), device="cpu")
    base, _ = load_causal_lm(str(qa_models[0]), device="cpu")
    held_out = load_eval_texts(str(qa_held_out), max_samples=40)[0]
    in_domain = head_uncertainty(model, task_tokenizer, held_out)
    epistemic = [s["epistemic"] for s in in_domain["sequences"]]
    for other in (shuffled_texts(task_tokenizer, held_out), CORPUS[:6]):
        u = head_uncertainty(model, task_tokenizer, other)
        assert u["epistemic"] > 2 * in_domain["epistemic"]
        assert auroc(epistemic, [s["epistemic"] for s in u["sequences"]]) > 0.9
    # the split is exact, and in domain most of the uncertainty is the data's
    assert in_domain["total"] == pytest.approx(in_domain["aleatoric"] + in_domain["epistemic"], rel=1e-9)
    assert in_domain["epistemic"] < 0.15 * in_domain["total"]
    own = evaluate_model(base, task_tokenizer, held_out, num_samples=0)["metrics"]
    for key, value in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    capsys.readouterr()
    assert main(["eval", str(out), "--dataset", str(qa_held_out), "--max-samples", "40", "--num-samples", "0",
                 "--json", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["uncertainty"]["epistemic"] == pytest.approx(in_domain["epistemic"], rel=1e-6)
    assert results["metrics"]["perplexity"] == pytest.approx(own["perplexity"], rel=1e-9)
