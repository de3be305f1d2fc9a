import json
import shutil

import pytest
from helpers.tiny_lm import CORPUS, save_tiny_model
from huggingface_hub import ModelCard

from openllm.evaluation.perplexity import evaluate_model
from openllm.hub.model_card import check_model_card, write_model_card
from openllm.models.presets import parameter_counts

LOG_HISTORY = [{"step": s, "loss": 6.0 - s / 40, "learning_rate": 3e-4} for s in range(10, 101, 10)] + [
    {"step": 50, "eval_loss": 5.25}, {"step": 100, "eval_loss": 4.75}]


def summary(stage="pretrain", **extra):
    return {"stage": stage, "base_model": None, "datasets": ["roneneldan/TinyStories", "data/extra.txt"],
            "data": {"documents": 1200, "tokens": 345678, "train_blocks": 2700},
            "training_args": {"learning_rate": 0.0003, "per_device_train_batch_size": 16, "max_steps": 100},
            "log_history": LOG_HISTORY, "metrics": {"eval_loss": 4.75}, "hardware": "2 CPU cores",
            "train_runtime_s": 95.0, **extra}


@pytest.fixture(scope="module")
def evaluated_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("evaluated") / "openllm-tiny"
    model = save_tiny_model(folder, tokenizer)
    (folder / "training_summary.json").write_text(json.dumps(summary()))
    info = {"name": "held_out.jsonl", "split": "train", "text_column": "text"}
    evaluate_model(model, tokenizer, CORPUS[:6], block_size=32, num_samples=2, sample_max_new_tokens=6,
                   output_dir=folder, dataset_info=info)
    return folder, sum(p.numel() for p in model.parameters())


def test_card_holds_the_measured_numbers(evaluated_dir):
    folder, num_params = evaluated_dir
    path = write_model_card(folder, repo_id="someone/openllm-tiny", language="en")
    text = path.read_text()
    results = json.loads((folder / "eval_results.json").read_text())
    m = results["metrics"]
    for value in (f"{m['perplexity']:.3f}", f"{m['bits_per_byte']:.4f}", f"{m['ece']:.4f}", f"{m['brier']:.4f}"):
        assert value in text
    assert f"| Parameters | {num_params:,} total |" in text
    assert "| tokens | 345,678 |" in text and "| `learning_rate` | 0.0003 |" in text
    assert f"{results['dataset']['tokens']:,} tokens, {results['dataset']['bytes']:,} UTF-8 bytes" in text
    assert 'AutoModelForCausalLM.from_pretrained("someone/openllm-tiny", trust_remote_code=True)' in text
    assert f"> **{results['samples'][0]['prompt']}**" in text
    assert "![Training curve: loss against step](training_curve.png)" in text
    assert (folder / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Reliability diagram" in text and "### Not evaluated" in text
    assert "held-out text (no `eval_results.json`" not in text  # it was evaluated


def test_card_metadata_parses_and_matches_eval_results(evaluated_dir):
    folder, _ = evaluated_dir
    path = write_model_card(folder, repo_id="someone/openllm-tiny", language="en")
    card = ModelCard.load(path, ignore_metadata_errors=False)
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag, data.language) == (
        "apache-2.0", "transformers", "text-generation", "en")
    assert data.datasets == ["roneneldan/TinyStories"]  # local paths stay out of the Hub metadata
    assert data.model_name == "openllm-tiny"
    metrics = json.loads((folder / "eval_results.json").read_text())["metrics"]
    logged = {r.metric_type: r.metric_value for r in data.eval_results}
    assert logged == pytest.approx({"perplexity": metrics["perplexity"], "bits_per_byte": metrics["bits_per_byte"],
                                    "accuracy": metrics["accuracy"], "expected_calibration_error": metrics["ece"],
                                    "brier_score": metrics["brier"]}, abs=1e-6)
    assert {(r.dataset_name, r.dataset_split, r.task_type) for r in data.eval_results} == {
        ("held_out.jsonl", "train", "text-generation")}
    assert check_model_card(path).data.to_dict() == data.to_dict()


def test_card_reports_the_calibration_chosen_and_ece_before_and_after(evaluated_dir, tmp_path, tokenizer):
    from openllm.evaluation.calibration import calibrate_model, write_calibrated_folder
    from openllm.models.loading import load_causal_lm

    folder = tmp_path / "openllm-tiny-calibrated"
    shutil.copytree(evaluated_dir[0], folder)
    model, _ = load_causal_lm(str(folder), device="cpu")
    report = calibrate_model(model, tokenizer, CORPUS[:12], block_size=32)
    report["dataset"] = {"name": "held_out.jsonl"}
    write_calibrated_folder(folder, folder, report)
    text = write_model_card(folder).read_text()
    section = text.split("### Calibration")[1].split("###")[0]
    chosen = report["method"]
    assert chosen == "platt"  # an untrained model's token frequencies are far off: per-token biases fix most of it
    assert ("calibrated by **Platt scaling (a scale and a per-token bias on the logits)**, applied in the model's own "
            "forward pass (`openllm calibrate`): of temperature, beta, platt, the method with the lowest next-token "
            "NLL in 2-fold cross-validation") in " ".join(section.split())
    assert f"{report['before']['ece']:.4f} before, {report['after']['ece']:.4f} after" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "Calibration" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| none (before)", "| temperature", "| beta",
                                                     "| **platt** (chosen)"]
    for row, metrics in zip(rows, [report["before"], *(r["after"] for r in report["methods"].values())]):
        assert f"| {metrics['nll']:.4f} | {metrics['ece']:.4f} | {metrics['brier']:.4f} |" in row
    assert "![Reliability diagrams before and after calibration](calibration.png)" in section
    # a calibration.json from before the choice among methods existed: temperature scaling
    old = {"temperature": 2.0, "fit": report["fit"], "eval": report["eval"], "before": report["before"],
           "after": report["methods"]["temperature"]["after"], "settings": {}}
    (folder / "calibration.json").write_text(json.dumps(old))
    section = write_model_card(folder).read_text().split("### Calibration")[1]
    assert "calibrated by **temperature scaling**" in section and "| **temperature** (chosen) |" in section


def test_moe_card_has_exact_total_and_active_counts(tmp_path, tokenizer):
    model = save_tiny_model(tmp_path, tokenizer, preset="tiny-moe")
    text = write_model_card(tmp_path).read_text()
    total, active = parameter_counts(model.config)
    assert total == sum(p.numel() for p in model.parameters()) and active < total
    assert f"| Parameters | {total:,} total, {active:,} active per token |" in text
    assert "- moe" in text and "top-2 routing" in text


def test_unevaluated_model_says_so(tmp_path, tiny_model_dir):
    folder = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, folder)
    text = write_model_card(folder).read_text()
    assert "model-index" not in text and "## Sample generations" not in text
    assert "- perplexity, bits per byte and calibration on held-out text (no `eval_results.json`" in text
    assert "No `training_summary.json` was found" in text
    assert "Versions of the environment that wrote this card" in text
    assert ModelCard.load(folder / "README.md").data.eval_results is None


@pytest.mark.parametrize("stage,expected", [
    ("sft", "openllm-tiny-sft is someone/openllm-tiny after supervised fine-tuning (SFT) with OpenLLM"),
    ("merge", "openllm-tiny-sft is someone/openllm-tiny with the LoRA adapter someone/lora merged into its weights"),
])
def test_stage_templates(tmp_path, tiny_model_dir, stage, expected):
    folder = tmp_path / "openllm-tiny-sft"
    shutil.copytree(tiny_model_dir, folder)
    info = summary(stage, base_model="someone/openllm-tiny", adapter="someone/lora")
    (folder / "training_summary.json").write_text(json.dumps(info))
    text = write_model_card(folder).read_text()
    assert expected in text
    assert "instruction following and chat quality" in text
    assert ModelCard.load(folder / "README.md").data.base_model == "someone/openllm-tiny"


def test_card_says_what_the_stage_changed_before_and_after(tmp_path, tiny_model_dir):
    folder = tmp_path / "openllm-tiny-sft"
    shutil.copytree(tiny_model_dir, folder)
    metrics = {"initial_eval_loss": 5.7392, "eval_loss": 0.1703, "initial_eval_answer_accuracy": 0.0,
               "eval_answer_accuracy": 0.43, "train_loss": 0.5, "initial_reward": None}
    (folder / "training_summary.json").write_text(json.dumps(summary("sft", metrics=metrics)))
    text = write_model_card(folder).read_text()
    table = text.split("What this stage changed")[1].split("\n\n")[1]
    assert table.splitlines()[2:] == ["| `eval_loss` | 5.7392 | 0.1703 |",
                                      "| `eval_answer_accuracy` | 0.0000 | 0.4300 |"]
    (folder / "training_summary.json").write_text(json.dumps(summary("sft")))  # nothing measured before
    assert "What this stage changed" not in write_model_card(folder).read_text()


def test_card_errors_are_clear(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        write_model_card(tmp_path)
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    with pytest.raises(ValueError, match="Unknown model card field.*licence"):
        write_model_card(folder, licence="mit")
    (folder / "training_summary.json").write_text(json.dumps(summary("pretraining")))
    with pytest.raises(ValueError, match="Unknown stage 'pretraining'"):
        write_model_card(folder)


def test_output_folder_of_other_files_is_not_replaced(tmp_path):
    from openllm.hub.paths import check_output_folder

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds files that are not a model folder"):
        check_output_folder(tmp_path)
    check_output_folder(tmp_path / "new")  # a new folder, an empty one or a model folder are fine
    (tmp_path / "config.json").write_text("{}")
    check_output_folder(tmp_path)
