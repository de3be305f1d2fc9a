import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openllm.data.text import load_eval_texts
from openllm.evaluation.generation import load_causal_lm
from openllm.evaluation.harness import TASKS_DIR, run_lm_eval
from openllm.evaluation.perplexity import evaluate_model
from openllm_cli import main

pytest.importorskip("lm_eval")
HELDOUT = TASKS_DIR / "data" / "heldout.jsonl"
SRC = Path(__file__).resolve().parents[2] / "src"


def test_lm_eval_and_native_bits_per_byte_agree_and_reach_the_card(tiny_model_dir, tmp_path, capsys):
    from openllm.hub.model_card import check_model_card, write_model_card

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert main(["eval", str(folder), "--dataset", str(HELDOUT), "--tasks", "openllm_heldout", "--num-samples", "0",
                 "--output-dir", str(folder), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert json.loads((folder / "eval_results.json").read_text()) == results
    ours, theirs = results["metrics"], results["lm_eval"]["tasks"]["openllm_heldout"]
    assert theirs["sample_len"] == results["dataset"]["texts"] == len(load_eval_texts(str(HELDOUT))[0])
    # every text fits one window: the same tokens, the same BOS prefix, the same byte count
    assert theirs["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=1e-4)
    assert theirs["byte_perplexity"] == pytest.approx(2 ** ours["bits_per_byte"], rel=1e-4)

    # lm-eval alone, later: its results are merged into the file, the held-out numbers stay
    assert main(["eval", str(folder), "--tasks", "openllm_synthetic_mc", "--limit", "10", "--output-dir",
                 str(folder)]) == 0
    merged = json.loads((folder / "eval_results.json").read_text())
    assert merged["metrics"] == ours and set(merged["lm_eval"]["tasks"]) == {"openllm_synthetic_mc"}
    assert "openllm_synthetic_mc" in capsys.readouterr().out

    card = check_model_card(write_model_card(folder))
    index = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert index[("openllm_synthetic_mc", "acc")] == pytest.approx(merged["lm_eval"]["tasks"]["openllm_synthetic_mc"]
                                                                    ["acc"], abs=1e-6)
    assert index[(str(HELDOUT), "bits_per_byte")] == pytest.approx(ours["bits_per_byte"], abs=1e-6)
    assert "| openllm_synthetic_mc | acc |" in card.text


def test_synthetic_tasks_score_what_the_model_prefers_and_generates(qa_models):
    """lm-eval's multiple-choice accuracy and exact match equal the same decisions computed here by hand."""
    from openllm.evaluation.tasks.utils import synthetic_choices
    from openllm.tasks.answer import answer_matches as is_correct

    model, tokenizer = load_causal_lm(str(qa_models[0]), device="cpu")
    summary = run_lm_eval(model, tokenizer, "openllm_synthetic_mc,openllm_synthetic_gen", limit=30)
    docs = synthetic_choices()["test"].select(range(30))
    right = generated = 0
    for doc in docs:
        context = f"Question: {doc['prompt']}\nAnswer:"
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        right += scores.index(max(scores)) == doc["label"]
        inputs = tokenizer(context, return_tensors="pt", add_special_tokens=False)
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]
        generated += is_correct(text, doc["answer"])
    tasks = summary["tasks"]
    assert tasks["openllm_synthetic_mc"]["acc"] == pytest.approx(right / 30)
    assert tasks["openllm_synthetic_gen"]["exact_match"] == pytest.approx(generated / 30)
    assert summary["n_samples"] == {"openllm_synthetic_mc": 30, "openllm_synthetic_gen": 30}


@pytest.mark.slow  # the lm_eval command indexes its thousands of built-in task YAMLs first: a minute or more here
def test_lm_eval_command_line_evaluates_an_openllm_folder_offline(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "lm-eval"
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={tiny_model_dir},trust_remote_code=True,dtype=float32", "--tasks", "openllm_heldout",
                    "--include_path", str(TASKS_DIR), "--device", "cpu", "--batch_size", "4", "--output_path",
                    str(out)], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["openllm_heldout"]
    model, tokenizer = load_causal_lm(str(tiny_model_dir), device="cpu")
    native = evaluate_model(model, tokenizer, load_eval_texts(str(HELDOUT))[0], num_samples=0)["metrics"]
    assert results["bits_per_byte,none"] == pytest.approx(native["bits_per_byte"], rel=1e-4)


def test_lm_eval_errors_are_clear(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_model_dir)]) == 2
    assert "Nothing to evaluate: pass --dataset (held-out texts), --tasks" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--tasks", "openllm_nope"]) == 2
    err = capsys.readouterr().err
    assert "Unknown lm-eval task(s) openllm_nope" in err and "openllm_heldout" in err
    assert main(["eval", str(tiny_model_dir), "--tasks", "openllm_heldout", "--include-path",
                 str(tmp_path / "missing")]) == 2
    assert "is not a folder of lm-eval task YAMLs" in capsys.readouterr().err
