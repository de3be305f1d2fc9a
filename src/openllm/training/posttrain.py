"""What the post-training recipes (`recipes/{sft,dpo,reward,rlhf}.py`) share: script arguments, model and tokenizer
loading (LoRA targets, QLoRA checks), expert-utilisation logging for MoE models, answer accuracy on checkable tasks,
and the end of every run (save, `training_summary.json`, model card, Hub push).

    python -m openllm.training.posttrain init-base outputs/tiny-base --preset tiny   # start for the *_debug recipes
"""

import argparse
import json
import logging
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments, SFTConfig

from ..hub.push import push_folder

logger = logging.getLogger("openllm.training.posttrain")

# PEFT has no default LoRA targets for model_type "openllm". Fused expert weights are parameters, not nn.Linear, so on
# MoE layers these names reach attention only (use `lora_target_parameters` for the experts).
OPENLLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

_SUMMARY_ARGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed", "bf16",
    "activation_checkpointing", "max_length", "packing", "assistant_only_loss", "completion_only_loss", "beta",
    "loss_type", "num_generations", "max_completion_length", "temperature", "center_rewards_coefficient",
)
_SUMMARY_MODEL_ARGS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
                       "load_in_8bit")


@dataclass
class PostTrainArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus what every OpenLLM post-training recipe reads.

    `dataset_name` also takes a local file/folder or a synthetic `openllm:mix` (see `openllm.data.post_training`);
    `dataset_config` then picks `conversational` (default) or `standard` strings.
    """

    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to the one saved with the model."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    eval_before_and_after: bool = field(
        default=True,
        metadata={"help": "Evaluate on the test split before and after training and record both in "
                          "training_summary.json (`initial_*` = before)."})
    answer_accuracy: bool = field(
        default=True,
        metadata={"help": "When the test split has an `answer` column, also measure greedy exact-match accuracy "
                          "before and after training."})
    log_expert_load: bool = field(
        default=True, metadata={"help": "Log expert utilisation (`moe/*`) for Mixture-of-Experts models."})


@dataclass
class RLHFArguments(PostTrainArguments):
    """`PostTrainArguments` plus where the reward comes from: a trained reward model and/or named reward functions."""

    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model folder or Hub id (a sequence-classification model, 1 label)."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "Programmatic rewards from `openllm.training.rewards.REWARD_FUNCS` (e.g. accuracy)."})


@dataclass
class OpenLLMSFTConfig(SFTConfig):
    """`SFTConfig` whose `assistant_only_loss` defaults to None (True on conversational data, where TRL needs it to be
    False otherwise) instead of False."""

    assistant_only_loss: bool | None = field(
        default=None,
        metadata={"help": "Loss on assistant turns only. Defaults to True for conversational data, False otherwise."},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def load_tokenizer(script_args, model_args, training_args):
    from transformers import AutoTokenizer

    name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name, revision=model_args.model_revision,
                                              trust_remote_code=getattr(training_args, "trust_remote_code", False))
    if tokenizer.pad_token is None:
        logger.info("The tokenizer has no pad token; using its eos token %r for padding.", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def require_chat_template(tokenizer, data_format: str, dataset_name: str):
    if data_format in ("messages", "conversational") and not tokenizer.chat_template:
        raise ValueError(f"{dataset_name} is conversational but the tokenizer has no chat template: train a tokenizer "
                         "with one, or set `chat_template_path` to a Jinja template.")


def check_quantization(model_args):
    """QLoRA needs a CUDA GPU and bitsandbytes, and trains adapters only: say so before anything is loaded."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    import torch

    if not model_args.use_peft:
        raise ValueError("load_in_4bit/load_in_8bit (QLoRA) freezes the quantized base: also set `use_peft: true`.")
    if not torch.cuda.is_available():
        raise ValueError("QLoRA (load_in_4bit/load_in_8bit) needs a CUDA GPU and bitsandbytes; this machine has no "
                         "GPU. Use plain LoRA instead: keep `use_peft: true` and drop load_in_4bit/load_in_8bit.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ValueError("QLoRA needs bitsandbytes: `pip install bitsandbytes`.") from e


def model_init_kwargs(model_args, training_args) -> dict:
    """Keyword arguments for `from_pretrained`, as TRL's scripts build them (dtype, attention, quantization)."""
    from trl import get_quantization_config

    check_quantization(model_args)
    kwargs = dict(revision=model_args.model_revision,
                  trust_remote_code=getattr(training_args, "trust_remote_code", False),
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype or "auto")
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization_config, device_map={"": PartialState().local_process_index})
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def load_model(model_args, training_args, sequence_classification: bool = False):
    """The model to train: a causal LM, or (reward models) a 1-label sequence classifier whose decoder is initialised
    from the causal LM checkpoint and whose `score` head is new."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    import openllm.models  # noqa: F401  (registers OpenLLM with the Auto classes)

    kwargs = model_init_kwargs(model_args, training_args)
    if sequence_classification:
        model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, num_labels=1,
                                                                   **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    config = model.config
    if hasattr(training_args, "router_aux_loss_coef") and getattr(config, "model_type", "") == "openllm":
        if not getattr(config, "num_experts", 0) and training_args.router_aux_loss_coef is None:
            # dense OpenLLM configs carry the MoE fields too; without this TRL would add an (empty) router loss
            training_args.router_aux_loss_coef = 0.0
    return model


def peft_config(model_args, model=None, task_type: str | None = None):
    """TRL's LoraConfig from `model_args`, with OpenLLM's module names as default targets."""
    from trl import get_peft_config

    if not model_args.use_peft:
        return None
    if task_type:
        model_args.lora_task_type = task_type
    if model_args.lora_target_modules is None and model is not None:
        if getattr(model.config, "model_type", "") == "openllm":
            model_args.lora_target_modules = list(OPENLLM_LORA_TARGETS)
    if task_type == "SEQ_CLS" and model_args.lora_modules_to_save is None:
        model_args.lora_modules_to_save = ["score"]  # the new head is trained in full
    return get_peft_config(model_args)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_stage_dataset(script_args, stage: str, seed: int = 0):
    """(train, test, format) for `stage`, checked and truncated as the script arguments say; format is
    "conversational" when examples are chat messages."""
    from ..data.post_training import check_dataset, load_post_dataset

    dataset = load_post_dataset(script_args.dataset_name, stage, script_args.dataset_config,
                                script_args.dataset_train_split, script_args.dataset_test_split, seed=seed)
    train, test = dataset[script_args.dataset_train_split], dataset[script_args.dataset_test_split]
    if script_args.max_train_samples:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    if script_args.max_eval_samples:
        test = test.select(range(min(script_args.max_eval_samples, len(test))))
    data_format = check_dataset(train, stage, script_args.dataset_name)
    if data_format != "text":
        sample = train[0].get("prompt", train[0].get("messages", train[0].get("chosen")))
        data_format = "conversational" if isinstance(sample, list) else data_format
    return train, test, data_format


# ---------------------------------------------------------------------------------------------------------------------
# MoE expert utilisation
# ---------------------------------------------------------------------------------------------------------------------


def _expert_load_source(model):
    """The module with `get_expert_load` inside PEFT/DDP wrappers, or None for dense models."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        while candidate is not None:
            if hasattr(type(candidate), "get_expert_load"):
                return candidate if getattr(candidate.config, "num_experts", 0) else None
            candidate = getattr(candidate, "model", None)
    return None


def make_expert_load_callback():
    from transformers import TrainerCallback

    class ExpertLoadCallback(TrainerCallback):
        """Adds `moe/load_max`, `moe/load_min` (an expert's share × number of experts: 1.0 = balanced) and
        `moe/load_cv` (mean over layers of the coefficient of variation) to every log, and keeps the run's
        per-layer load in `self.total` for the summary."""

        def __init__(self):
            self.total = {}

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            source = _expert_load_source(model)
            if source is None or logs is None:
                return
            load = source.get_expert_load(reset=True)
            if not load:
                return
            scaled = {layer: frac.float().cpu() * frac.numel() for layer, frac in load.items()}
            stats = {
                "moe/load_max": round(max(s.max().item() for s in scaled.values()), 4),
                "moe/load_min": round(min(s.min().item() for s in scaled.values()), 4),
                "moe/load_cv": round(sum(s.std(unbiased=False).item() for s in scaled.values()) / len(scaled), 4),
            }
            logs.update(stats)
            if state.log_history:  # Trainer appended a copy of `logs` before calling us
                state.log_history[-1].update(stats)
            for layer, frac in load.items():
                self.total[layer] = self.total.get(layer, 0) + frac.float().cpu()

        def summary(self) -> dict:
            return {str(layer): [round(x, 4) for x in (t / t.sum()).tolist()] for layer, t in self.total.items()}

    return ExpertLoadCallback()


def add_expert_load_logging(trainer, script_args):
    """Attach the expert-load callback when the model is MoE; first in line so loggers (TensorBoard...) see it."""
    if not script_args.log_expert_load or _expert_load_source(trainer.model) is None:
        return None
    callback = make_expert_load_callback()
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback


# ---------------------------------------------------------------------------------------------------------------------
# Exact-match accuracy on checkable answers
# ---------------------------------------------------------------------------------------------------------------------


def answer_accuracy(model, tokenizer, prompts, answers, max_new_tokens: int = 8, batch_size: int = 64) -> float:
    """Share of `prompts` (strings or chat messages) for which greedy decoding yields exactly `answers`."""
    import torch

    from ..data.post_training import is_correct

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list)
             else p for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += sum(is_correct(c, a) for c, a in zip(completions, answers[start:start + batch_size]))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return correct / max(len(texts), 1)


def eval_answer_accuracy(trainer, script_args, eval_dataset) -> float | None:
    if not script_args.answer_accuracy or eval_dataset is None or "answer" not in eval_dataset.column_names:
        return None
    if "prompt" in eval_dataset.column_names:
        prompts = eval_dataset["prompt"]
    else:  # conversations: everything before the final assistant turn
        prompts = [m[:max(i for i, x in enumerate(m) if x["role"] == "assistant")] for m in eval_dataset["messages"]]
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    return round(answer_accuracy(trainer.model, tokenizer, prompts, eval_dataset["answer"]), 4)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluate, train, save, summarise, publish
# ---------------------------------------------------------------------------------------------------------------------


def setup_logging():
    """openllm's INFO lines on the main process, warnings only on the others."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[openllm] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)


def hardware_description() -> str:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    else:
        device = "CPU"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    device = f"CPU ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
                    break
        except OSError:
            device = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    return device if world == 1 else f"{device}, {world} processes"


def _numbers(metrics: dict) -> dict:
    """Finite numbers of a Trainer metrics dict, without timings and counters."""
    skip = ("runtime", "per_second", "preparation_time", "num_tokens", "total_flos")
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and not any(s in k for s in skip)}


def resume_argument(training_args):
    """`resume_from_checkpoint`: a checkpoint path, or true/last for the newest checkpoint in `output_dir`."""
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "last", "latest"):
        return True
    return value


def run_and_finish(trainer, stage: str, script_args, training_args, model_args, eval_dataset=None,
                   extra_metrics=None) -> dict:
    """Evaluate (before), train, evaluate (after), save, write `training_summary.json` and the model card, push.
    `extra_metrics(trainer) -> dict` adds stage metrics after training. Returns the summary (main process)."""
    import json as _json

    metrics = {}
    expert_callback = add_expert_load_logging(trainer, script_args)
    evaluate = script_args.eval_before_and_after and trainer.eval_dataset is not None
    if evaluate:
        metrics.update({f"initial_{k}": v for k, v in _numbers(trainer.evaluate()).items() if k != "epoch"})
    accuracy = eval_answer_accuracy(trainer, script_args, eval_dataset)
    if accuracy is not None:
        metrics["initial_eval_answer_accuracy"] = accuracy

    train_output = trainer.train(resume_from_checkpoint=resume_argument(training_args))
    metrics.update({k: v for k, v in _numbers(train_output.metrics).items() if k.startswith("train_")})
    if evaluate:
        metrics.update(_numbers(trainer.evaluate()))
    accuracy = eval_answer_accuracy(trainer, script_args, eval_dataset)
    if accuracy is not None:
        metrics["eval_answer_accuracy"] = accuracy
    if "eval_loss" in metrics and stage == "sft":
        metrics["perplexity"] = round(math.exp(min(metrics["eval_loss"], 50)), 4)
        if "initial_eval_loss" in metrics:
            metrics["initial_perplexity"] = round(math.exp(min(metrics["initial_eval_loss"], 50)), 4)
    if extra_metrics is not None:
        metrics.update(extra_metrics(trainer))
    if expert_callback is not None:
        metrics["expert_load"] = expert_callback.summary()

    output_dir = training_args.output_dir
    trainer.save_model(output_dir)
    summary = None
    if trainer.accelerator.is_main_process:
        portable_tokenizer_config(output_dir)
        summary = write_training_summary(trainer, stage, script_args, training_args, model_args, metrics,
                                         train_output.metrics.get("train_runtime"))
        logger.info("%s finished: %s", stage, _json.dumps({k: v for k, v in metrics.items() if k != "expert_load"}))
        write_card(output_dir)
        if getattr(training_args, "_openllm_push_to_hub", False):
            push_folder(output_dir, training_args.hub_model_id or Path(output_dir).name,
                        private=training_args.hub_private_repo, token=training_args.hub_token)
    trainer.accelerator.wait_for_everyone()
    return summary


def portable_tokenizer_config(folder):
    """transformers 5 saves `"tokenizer_class": "TokenizersBackend"`, which 4.57 cannot load; the same files load as
    `PreTrainedTokenizerFast` on both."""
    path = Path(folder) / "tokenizer_config.json"
    if path.exists():
        config = json.loads(path.read_text())
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_training_summary(trainer, stage, script_args, training_args, model_args, metrics, runtime=None,
                           output_dir=None) -> dict:
    """`training_summary.json`, the folder contract the model card and evaluation read."""
    world = trainer.accelerator.num_processes
    args = {k: getattr(training_args, k) for k in _SUMMARY_ARGS if hasattr(training_args, k)}
    if model_args.use_peft:
        args.update({k: getattr(model_args, k) for k in _SUMMARY_MODEL_ARGS if getattr(model_args, k, None)})
    args["global_batch_size"] = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                                 * world)
    args["world_size"] = world
    data = {}
    for name, dataset in (("train_examples", trainer.train_dataset), ("eval_examples", trainer.eval_dataset)):
        if dataset is not None and hasattr(dataset, "__len__"):
            data[name] = len(dataset)
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if tokens:
        data["train_tokens"] = int(tokens[-1])
    summary = {
        "stage": stage,
        "base_model": model_args.model_name_or_path,
        "datasets": [script_args.dataset_name] if script_args.dataset_name else [],
        "data": data,
        "training_args": json.loads(json.dumps(args, default=str)),
        "log_history": trainer.state.log_history,
        "metrics": metrics,
        "hardware": hardware_description(),
        "train_runtime_s": round(float(runtime), 2) if runtime is not None else None,
    }
    if getattr(model_args, "use_peft", False):
        summary["adapter"] = True  # the folder holds a LoRA adapter; `openllm merge` makes a standalone model
    if stage == "rlhf":
        summary["reward"] = {"model": getattr(script_args, "reward_model_name_or_path", None) or None,
                             "functions": list(getattr(script_args, "reward_funcs", []) or [])}
    path = Path(output_dir or training_args.output_dir) / "training_summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def write_card(folder) -> bool:
    """Render the model card (README.md) from what the folder records."""
    from ..hub.model_card import write_model_card

    try:
        write_model_card(folder)
    except Exception as e:  # the trained model is already saved: report, don't lose the run over the card
        logger.error("Writing the model card for %s failed: %s", folder, e)
        return False
    return True


def take_push_to_hub(training_args):
    """Keep `Trainer` from creating the Hub repo up front (it fails offline); the finished folder is pushed by
    `run_and_finish` instead, with its summary and card."""
    training_args._openllm_push_to_hub = bool(training_args.push_to_hub)
    training_args.push_to_hub = False


# ---------------------------------------------------------------------------------------------------------------------
# python -m openllm.training.posttrain init-base
# ---------------------------------------------------------------------------------------------------------------------


def init_base(folder, preset: str = "tiny", tokenizer=None, seed: int = 0, **overrides):
    """Save an untrained OpenLLM model of `preset` with `tokenizer` (default: the synthetic tasks' tokenizer),
    a starting point for the debug recipes and tests."""
    import torch

    from .. import OpenLLMForCausalLM, get_preset_config
    from ..data.post_training import make_example_tokenizer

    tokenizer = tokenizer or make_example_tokenizer()
    config = get_preset_config(preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               **overrides)
    torch.manual_seed(seed)
    model = OpenLLMForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    portable_tokenizer_config(folder)
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m openllm.training.posttrain")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init-base", help="save an untrained model + the synthetic tasks' tokenizer")
    init.add_argument("folder")
    init.add_argument("--preset", default="tiny")
    init.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, tokenizer = init_base(args.folder, args.preset, seed=args.seed)
    print(f"Saved an untrained `{args.preset}` model ({model.num_parameters():,} parameters, vocabulary "
          f"{len(tokenizer)}) to {args.folder}")


if __name__ == "__main__":
    main()
