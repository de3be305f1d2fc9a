"""Render a model folder's README.md (its Hub model card) from what was measured, and nothing else.

    from .model_card import write_model_card
    write_model_card("out/openllm-small", repo_id="me/openllm-small", language="en")

Inputs, all read from the folder (see `model_cards/README.md` for the templates and their variables):
- config.json: architecture and exact parameter counts (total and, for MoE, active per token);
- training_summary.json (optional): stage, data and token counts, hyperparameters, the training curve;
- eval_results.json (optional, written by `openllm eval ... --output-dir FOLDER`): final numbers, which also go into
  the card's `model-index` metadata, and sample generations.
- calibration.json (optional, written by `openllm calibrate`): the calibration method chosen and applied in the
  forward pass, and ECE, NLL, Brier and accuracy before and after each candidate on held-out tokens.
Whatever is missing is reported as not evaluated, never filled in.
"""

import json
import logging
import math
import re
import struct
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..models import OpenLLMConfig
from ..models.presets import parameter_counts as config_counts
from ..resources import shipped
from ..versions import framework_versions

logger = logging.getLogger(__name__)

TEMPLATE_DIR = shipped("model_cards")
STAGE_TEMPLATES = {"pretrain": "pretrain.md.j2", "sft": "post_training.md.j2", "dpo": "post_training.md.j2",
                   "reward": "post_training.md.j2", "rlhf": "post_training.md.j2", "merge": "merged.md.j2"}
STAGE_NAMES = {"pretrain": "pretraining", "sft": "supervised fine-tuning (SFT)",
               "dpo": "direct preference optimization (DPO)", "reward": "reward modelling",
               "rlhf": "reinforcement learning from a reward model (RLHF)", "merge": "merging a LoRA adapter"}
# (metric key in eval_results.json, Hub metric type, readable name)
CARD_METRICS = [("perplexity", "perplexity", "Perplexity"), ("bits_per_byte", "bits_per_byte", "Bits per byte"),
                ("accuracy", "accuracy", "Next-token top-1 accuracy"),
                ("ece", "expected_calibration_error", "Expected calibration error (15 bins)"),
                ("brier", "brier_score", "Brier score (multi-class)")]
CURVE_FILE = "training_curve.png"
CALIBRATION_FILE, CALIBRATION_PLOT = "calibration.json", "calibration.png"  # written by `openllm calibrate`
CALIBRATION_METHODS = {"none": "no calibration", "temperature": "temperature scaling",
                       "platt": "Platt scaling (a scale and a per-token bias on the logits)",
                       "beta": "beta calibration of the top-1 probability"}


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it before writing the card.") from error


def safetensors_parameter_count(folder: Path) -> int | None:
    """Exact number of stored parameters, from the safetensors headers (no weights are loaded)."""
    total, files = 0, sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total if files else None


def checkpoint_parameter_counts(folder: Path, config: dict) -> tuple[int | None, int | None]:
    """(total, active per token). Total is what the checkpoint stores; for OpenLLM MoE models, the experts a token
    is not routed to are subtracted for the active count."""
    stored = safetensors_parameter_count(folder)
    if config.get("model_type") != "openllm":
        moe = any(config.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts"))
        return stored, None if moe else stored
    total, active = config_counts(OpenLLMConfig.from_dict(config))
    if stored is None:
        return total, active
    return stored, stored - (total - active)


def plot_training_curve(log_history: list[dict], path) -> Path | None:
    """Train and eval loss against step from `trainer.state.log_history`; None when it logged no loss."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    import matplotlib  # optional: the train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: the train extra

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", markersize=3)
    ax.set(xlabel="step", ylabel="loss (nats per token)", title="Training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _is_hub_id(name) -> bool:
    # Hub metadata only takes repository ids; local paths stay in the card's text
    return (isinstance(name, str) and bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~"))
            and not Path(name).exists() and not Path(name).suffix)


def _architecture(config: dict, folder: Path) -> dict:
    experts = config.get("num_experts") or config.get("num_local_experts") or 0
    total, active = checkpoint_parameter_counts(folder, config)
    heads = config.get("num_attention_heads")
    return {
        "model_type": config.get("model_type"),
        "class": (config.get("architectures") or ["?"])[0],
        "moe": bool(experts),
        "num_experts": experts,
        "num_experts_per_tok": config.get("num_experts_per_tok"),
        "moe_intermediate_size": config.get("moe_intermediate_size"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "intermediate_size": config.get("intermediate_size"),
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or (config["hidden_size"] // heads if heads else None),
        "vocab_size": config.get("vocab_size"),
        "context": config.get("max_position_embeddings"),
        "rope_theta": config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta"),
        "tied_embeddings": config.get("tie_word_embeddings"),
        "params_total": total,
        "params_active": active,
    }


def _card_metadata(ctx: dict):
    eval_results = None
    results = ctx["eval"]
    if results and "metrics" in results:
        d = results["dataset"]
        dataset = d.get("name") or "held-out texts"
        eval_results = [
            EvalResult(task_type="text-generation", task_name="Language modelling", dataset_type=dataset,
                       dataset_name=Path(dataset).name if Path(dataset).suffix else dataset,
                       dataset_config=d.get("config"), dataset_split=d.get("split"), metric_type=metric_type,
                       metric_name=name, metric_value=round(float(results["metrics"][key]), 6))
            for key, metric_type, name in CARD_METRICS if key in results["metrics"]
        ]
    # lm-evaluation-harness results (`openllm eval --tasks`), one entry per task and metric
    for task, metrics in ((results or {}).get("lm_eval") or {}).get("tasks", {}).items():
        eval_results = (eval_results or []) + [
            EvalResult(task_type="text-generation", task_name=f"lm-eval: {task}", dataset_type=task,
                       dataset_name=task, metric_type=metric, metric_name=f"{metric} (lm-eval)",
                       metric_value=round(float(value), 6))
            for metric, value in metrics.items()
            if not metric.endswith("_stderr") and metric != "sample_len" and math.isfinite(float(value))]
    tags = ["openllm", "custom_code", ctx["stage"]] + (["moe"] if ctx["arch"]["moe"] else []) + ctx["tags"]
    hub_datasets = [d for d in ctx["datasets"] if _is_hub_id(d)]
    return ModelCardData(
        model_name=ctx["model_name"],
        language=ctx["language"],
        license=ctx["license"],
        library_name="transformers",
        pipeline_tag=ctx["pipeline_tag"],
        tags=tags,
        datasets=hub_datasets or None,
        base_model=ctx["base_model"] if _is_hub_id(ctx["base_model"]) else None,
        eval_results=eval_results,
    )


def _not_evaluated(stage: str, eval_results: dict | None) -> list[str]:
    missing = []
    if not eval_results:
        missing.append("perplexity, bits per byte and calibration on held-out text (no `eval_results.json`; run "
                       "`openllm eval MODEL --dataset ... --output-dir MODEL`)")
    missing.append("downstream benchmarks (e.g. MMLU, HellaSwag, ARC) and few-shot task accuracy")
    if stage != "pretrain":
        missing.append("instruction following and chat quality (no human or model-judged comparison)")
    outside = "behaviour on languages and domains outside the training data"
    missing += ["factual accuracy", "safety, toxicity and bias", outside]
    return missing


def _default_intended_use(stage: str) -> str:
    if stage == "pretrain":
        return ("Research and education: studying how small language models learn, as a starting point for "
                "post-training, and as a baseline for experiments. It continues text; it does not follow "
                "instructions.")
    if stage == "reward":
        return "Scoring responses (higher is preferred) for preference learning and RLHF experiments."
    return ("Research and education on post-training methods; a starting point for further fine-tuning and "
            "evaluation.")


DEFAULT_LIMITATIONS = (
    "The model was trained on a limited corpus and can produce text that is wrong, repetitive, biased or offensive. "
    "Nothing it writes should be taken as fact. It has had no safety training or red-teaming and must not be used "
    "for decisions about people, for medical, legal or financial advice, or in production without further evaluation."
)


def calibration_context(folder: Path) -> dict | None:
    """What the card says about `openllm calibrate`'s choice: the method, its candidates' numbers on held-out tokens
    (`rows`, before first) and the reliability diagrams; None when the folder was not calibrated."""
    report = _read_json(folder / CALIBRATION_FILE)
    if not report:
        return None
    if "method" not in report:  # written before the choice among methods existed: temperature scaling only
        report = {**report, "method": "temperature", "methods": {"temperature": {"after": report["after"]}},
                  "selection": None}
    rows = [{"method": "none (before)", "chosen": report["method"] == "none", **report["before"]}]
    rows += [{"method": name, "chosen": name == report["method"], **result["after"]}
             for name, result in report["methods"].items()]
    return {"method": report["method"], "name": CALIBRATION_METHODS.get(report["method"], report["method"]),
            "candidates": list(report["methods"]), "selection": report.get("selection"), "fit": report["fit"],
            "eval": report["eval"], "dataset": (report.get("dataset") or {}).get("name"), "rows": rows,
            "ece_before": report["before"]["ece"], "ece_after": report["after"]["ece"],
            "plot": CALIBRATION_PLOT if (folder / CALIBRATION_PLOT).is_file() else None}


def before_and_after(metrics: dict) -> list[dict]:
    """Every held-out metric the run measured both before (`initial_<name>`) and after training."""
    changes = []
    for key, before in metrics.items():
        name = key[len("initial_"):]
        after = metrics.get(name)
        if key.startswith("initial_") and isinstance(before, (int, float)) and isinstance(after, (int, float)):
            changes.append({"metric": name, "before": before, "after": after})
    return changes


def build_context(folder, **overrides) -> dict:
    """Everything the templates see; any key can be overridden (see `model_cards/README.md`)."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} has no config.json: pass a model folder written by `save_pretrained`.")
    summary = _read_json(folder / "training_summary.json") or {}
    eval_results = _read_json(folder / "eval_results.json")
    stage = overrides.get("stage") or summary.get("stage") or "pretrain"
    if stage not in STAGE_TEMPLATES:
        raise ValueError(f"Unknown stage {stage!r} in training_summary.json; expected one of "
                         f"{', '.join(STAGE_TEMPLATES)}.")
    arch = _architecture(config, folder)
    classifier = arch["class"].endswith("ForSequenceClassification")
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    has_chat_template = bool(tokenizer_config.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    model_name = overrides.get("model_name") or folder.resolve().name
    ctx = {
        "model_name": model_name,
        "repo_id": overrides.get("repo_id") or f"path/to/{model_name}",
        "stage": stage,
        "stage_name": STAGE_NAMES[stage],
        "base_model": summary.get("base_model"),
        "adapter": summary.get("adapter"),
        "datasets": list(summary.get("datasets") or []),
        "data": summary.get("data") or {},
        "training_args": summary.get("training_args") or {},
        "training_metrics": summary.get("metrics") or {},
        "changes": before_and_after(summary.get("metrics") or {}),
        "hardware": summary.get("hardware"),
        "train_runtime_s": summary.get("train_runtime_s"),
        "curve": None,
        "arch": arch,
        "eval": eval_results,
        "reliability": None,
        "calibration": calibration_context(folder),
        "samples": (eval_results or {}).get("samples") or [],
        "sample_settings": (eval_results or {}).get("sample_settings"),
        "not_evaluated": _not_evaluated(stage, eval_results),
        "pipeline_tag": "text-classification" if classifier else "text-generation",
        "auto_class": "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM",
        "chat": has_chat_template,
        "language": None,
        "license": "apache-2.0",
        "tags": [],
        "description": None,
        "intended_use": _default_intended_use(stage),
        "limitations": DEFAULT_LIMITATIONS,
    }
    for source, versions in (("training", summary.get("framework_versions")),
                             ("evaluation", (eval_results or {}).get("framework_versions"))):
        if versions:
            ctx["versions"], ctx["versions_source"] = versions, source
            break
    else:
        ctx["versions"], ctx["versions_source"] = framework_versions(), "card"
    if eval_results and (folder / (eval_results.get("reliability_diagram") or "")).is_file():
        ctx["reliability"] = eval_results["reliability_diagram"]
    unknown = set(overrides) - set(ctx) - {"template", "template_dir"}
    if unknown:
        raise ValueError(f"Unknown model card field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(ctx))}.")
    ctx.update({k: v for k, v in overrides.items() if k in ctx})
    return ctx


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def write_model_card(folder, **overrides) -> Path:
    """Render `folder/README.md` from the folder's files (plus `folder/training_curve.png` when a log history
    exists) and check that its metadata parses as a Hub model card. `overrides` replace any template variable, e.g.
    `repo_id`, `language`, `license`, `intended_use`; `template` picks a template (name in `model_cards/` or path)."""
    folder = Path(folder)
    ctx = build_context(folder, **overrides)
    summary = _read_json(folder / "training_summary.json") or {}
    try:
        if summary.get("log_history") and plot_training_curve(summary["log_history"], folder / CURVE_FILE):
            ctx["curve"] = CURVE_FILE
    except ImportError:
        logger.warning("matplotlib is not installed, so the card has no training curve: `pip install matplotlib`.")
    template = Path(overrides.get("template") or STAGE_TEMPLATES[ctx["stage"]])
    template_dir = Path(overrides.get("template_dir") or (template.parent if template.is_file() else TEMPLATE_DIR))
    if not (template_dir / template.name).is_file():
        raise FileNotFoundError(f"Model card template {template.name} not found in {template_dir}; pass "
                                "template_dir= pointing at OpenLLM's model_cards/ folder or at your own templates.")
    env = Environment(loader=FileSystemLoader(template_dir), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v
    env.filters["duration"] = _duration
    env.filters["fmt"] = lambda v, digits=4: f"{v:.{digits}f}" if isinstance(v, float) else v
    body = re.sub(r"\n{3,}", "\n\n", env.get_template(template.name).render(**ctx))
    metadata = _card_metadata(ctx).to_yaml()
    path = folder / "README.md"
    path.write_text(f"---\n{metadata}\n---\n\n{body.strip()}\n", encoding="utf-8")
    check_model_card(path)
    return path


def check_model_card(path):
    """Parse the card the way the Hub library does (YAML front matter, `model-index`) without network access, and
    check the fields the Hub needs. Returns the `huggingface_hub.ModelCard`. (`ModelCard.validate()` runs the Hub's
    own check but needs the network.)"""
    card = ModelCard.load(path, ignore_metadata_errors=False)
    data = card.data
    problems = [f"missing {key}" for key in ("license", "library_name", "pipeline_tag") if not getattr(data, key)]
    for result in data.eval_results or []:
        if not isinstance(result.metric_value, (int, float)):
            problems.append(f"metric {result.metric_type} has a non-numeric value {result.metric_value!r}")
    if problems:
        raise ValueError(f"Model card {path} has invalid metadata: {'; '.join(problems)}.")
    return card


if __name__ == "__main__":
    import sys

    print(write_model_card(sys.argv[1]))
