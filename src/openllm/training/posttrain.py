"""What the post-training stages (`openllm.training.{sft,reward,dpo,rlhf}`) share: model and tokenizer loading
(LoRA targets, QLoRA checks), datasets, answer accuracy on checkable tasks, and `train_and_finish` (measure before,
train, measure after, save the finished folder through `openllm.training.run`).

    python -m openllm.training.posttrain init-base outputs/tiny-base --preset tiny   # start for the *_debug recipes
"""

import argparse
import logging
import math

import torch
from accelerate import PartialState
from trl import get_peft_config, get_quantization_config

from ..data.post_training import check_dataset
from ..data.tokenizer import save_tokenizer
from ..evaluation.answers import answer_accuracy
from ..evaluation.generation import scoring_mode
from ..models import OpenLLMForCausalLM, get_preset_config, loading
from ..tasks import ANSWER, load_post_dataset, make_example_tokenizer
from . import run

logger = logging.getLogger("openllm.training.posttrain")

# PEFT has no default LoRA targets for model_type "openllm". Fused expert weights are parameters, not nn.Linear, so on
# MoE layers these names reach attention only (use `lora_target_parameters` for the experts).
OPENLLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def load_tokenizer(script_args, model_args, training_args):
    name = script_args.tokenizer_name_or_path or model_args.model_name_or_path
    tokenizer = loading.load_tokenizer(name, revision=model_args.model_revision,
                                       trust_remote_code=training_args.trust_remote_code)
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
    if not model_args.use_peft:
        raise ValueError("load_in_4bit/load_in_8bit (QLoRA) freezes the quantized base: also set `use_peft: true`.")
    if not torch.cuda.is_available():
        raise ValueError("QLoRA (load_in_4bit/load_in_8bit) needs a CUDA GPU and bitsandbytes; this machine has no "
                         "GPU. Use plain LoRA instead: keep `use_peft: true` and drop load_in_4bit/load_in_8bit.")
    try:
        import bitsandbytes  # noqa: F401  (optional: user-installed for QLoRA, CUDA only)
    except ImportError as e:
        raise ValueError("QLoRA needs bitsandbytes: `pip install bitsandbytes`.") from e


def model_init_kwargs(model_args, training_args) -> dict:
    """Keyword arguments for `from_pretrained`, as TRL's scripts build them (attention, quantization)."""
    check_quantization(model_args)
    kwargs = dict(attn_implementation=model_args.attn_implementation)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": PartialState().local_process_index})
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def load_model(model_args, training_args, sequence_classification: bool = False):
    """The model to train: a causal LM, or (reward models) a 1-label sequence classifier whose decoder is initialised
    from the causal LM checkpoint and whose `score` head is new."""
    kwargs = model_init_kwargs(model_args, training_args)
    if sequence_classification:
        kwargs["num_labels"] = 1
    model = loading.load_model(model_args.model_name_or_path, device=None, dtype=model_args.dtype or "auto",
                               head="sequence-classification" if sequence_classification else "causal-lm",
                               revision=model_args.model_revision,
                               trust_remote_code=training_args.trust_remote_code, **kwargs)
    config = model.config
    if hasattr(training_args, "router_aux_loss_coef") and getattr(config, "model_type", "") == "openllm":
        if not getattr(config, "num_experts", 0) and training_args.router_aux_loss_coef is None:
            # dense OpenLLM configs carry the MoE fields too; without this TRL would add an (empty) router loss
            training_args.router_aux_loss_coef = 0.0
    return model


def peft_config(model_args, model=None, task_type: str | None = None):
    """TRL's LoraConfig from `model_args`, with OpenLLM's module names as default targets."""
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
    dataset = load_post_dataset(script_args.dataset_name, stage, script_args.dataset_config,
                                script_args.dataset_train_split, script_args.dataset_test_split, seed=seed,
                                terse_fraction=script_args.terse_fraction)
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
# Exact-match accuracy on checkable answers
# ---------------------------------------------------------------------------------------------------------------------


def completion_logprobs(model, tokenizer, prompts, completions, batch_size: int = 32) -> list[float]:
    """Summed log-probability of each completion after its prompt (strings, or chat messages through the chat
    template), the tokens of the completion only."""
    def text(prompt, completion):
        if isinstance(prompt, list):
            return (tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                    tokenizer.apply_chat_template(prompt + completion, tokenize=False))
        return prompt, prompt + completion

    pairs = [text(p, c) for p, c in zip(prompts, completions)]
    scores = []
    with scoring_mode(model, tokenizer, "right"):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            batch = tokenizer([full for _, full in chunk], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            starts = [len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt, _ in chunk]
            logits = model(**batch).logits[:, :-1].float()
            token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            positions = torch.arange(token_logps.shape[1], device=token_logps.device)[None]
            mask = (positions >= torch.tensor(starts, device=positions.device)[:, None] - 1) & \
                batch["attention_mask"][:, 1:].bool()
            scores += (token_logps * mask).sum(-1).tolist()
    return scores


def eval_preference_accuracy(trainer, eval_dataset) -> float | None:
    """Share of held-out pairs whose chosen completion the model itself finds likelier than the rejected one. (TRL's
    `rewards/accuracies` compares against the reference model instead, so it is 0 before DPO by construction.)"""
    if eval_dataset is None or not {"chosen", "rejected"} <= set(eval_dataset.column_names):
        return None
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    prompts = eval_dataset["prompt"] if "prompt" in eval_dataset.column_names else [""] * len(eval_dataset)
    chosen = completion_logprobs(trainer.model, tokenizer, prompts, eval_dataset["chosen"])
    rejected = completion_logprobs(trainer.model, tokenizer, prompts, eval_dataset["rejected"])
    return round(sum(c > r for c, r in zip(chosen, rejected)) / len(chosen), 4)


def eval_answer_accuracy(trainer, script_args, eval_dataset) -> float | None:
    """Greedy answer accuracy on the rows of `eval_dataset` that carry an `answer` (`openllm.tasks.answer`)."""
    if not script_args.answer_accuracy or eval_dataset is None or "answer" not in eval_dataset.column_names:
        return None
    if "prompt" in eval_dataset.column_names:
        prompts = eval_dataset["prompt"]
    else:  # conversations: everything before the final assistant turn
        prompts = [m[:max(i for i, x in enumerate(m) if x["role"] == "assistant")] for m in eval_dataset["messages"]]
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    examples = [{"prompt": p, "answer": a} for p, a in zip(prompts, eval_dataset["answer"])]
    return round(answer_accuracy(trainer.model, tokenizer, ANSWER, examples,
                                 max_new_tokens=script_args.answer_max_new_tokens), 4)


# ---------------------------------------------------------------------------------------------------------------------
# Measure before, train, measure after, save
# ---------------------------------------------------------------------------------------------------------------------


def measure(trainer, stage: str, script_args, eval_dataset, prefix: str = "") -> dict:
    """Test-split metrics (loss, stage metrics) and answer accuracy, as `{prefix}eval_*`."""
    metrics = {}
    if script_args.eval_before_and_after and trainer.eval_dataset is not None:
        metrics.update({f"{prefix}{k}": v for k, v in run.numbers(trainer.evaluate()).items() if k != "epoch"})
    accuracy = eval_answer_accuracy(trainer, script_args, eval_dataset)
    if accuracy is not None:
        metrics[f"{prefix}eval_answer_accuracy"] = accuracy
    preference = eval_preference_accuracy(trainer, eval_dataset) if stage == "dpo" else None
    if preference is not None:
        metrics[f"{prefix}eval_preference_accuracy"] = preference
    if f"{prefix}eval_loss" in metrics and stage == "sft":
        metrics[f"{prefix}perplexity"] = round(math.exp(min(metrics[f"{prefix}eval_loss"], 50)), 4)
    return metrics


def train_and_finish(trainer, stage: str, script_args, training_args, model_args, eval_dataset=None, push=False,
                     extra_metrics=None, **extra) -> dict:
    """Measure (before), train (resuming from the newest complete checkpoint), measure (after), and save the finished
    folder with its `training_summary.json` and model card; push when asked. `extra_metrics(trainer) -> dict` adds
    stage metrics after training. Returns the summary."""
    trainer.log_expert_load = script_args.log_expert_load
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    trainer.run_state["data"] = run.data_identity(
        datasets=[script_args.dataset_name], tokenizer=tokenizer,
        length=getattr(training_args, "max_length", None) or getattr(training_args, "max_completion_length", None))
    checkpoint = run.resolve_checkpoint(training_args)
    initial = run.initial_metrics(trainer, checkpoint,
                                  lambda: measure(trainer, stage, script_args, eval_dataset, prefix="initial_"))

    train_output = run.train(trainer, checkpoint)
    metrics = {**initial, **{k: v for k, v in run.numbers(train_output.metrics).items() if k.startswith("train_")}}
    metrics.update(measure(trainer, stage, script_args, eval_dataset))
    if extra_metrics is not None:
        metrics.update(extra_metrics(trainer))
    if trainer.run_state["expert_load_total"]:
        metrics["expert_load"] = trainer.expert_load_summary()

    data = {}
    for name, dataset in (("train_examples", trainer.train_dataset), ("eval_examples", trainer.eval_dataset)):
        if dataset is not None and hasattr(dataset, "__len__"):
            data[name] = len(dataset)
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if tokens:
        data["train_tokens"] = int(tokens[-1])
    if getattr(model_args, "use_peft", False):
        extra["adapter"] = True  # the folder holds a LoRA adapter; `openllm merge` makes a standalone model
    summary = run.training_summary(
        trainer, stage, training_args, train_output, base_model=model_args.model_name_or_path,
        datasets=[script_args.dataset_name] if script_args.dataset_name else [], data=data, metrics=metrics,
        model_args=model_args, **extra)
    run.save_final(trainer, training_args, summary)
    if trainer.accelerator.is_main_process:
        logger.info("%s finished: %s", stage, {k: v for k, v in metrics.items() if k != "expert_load"})
    if push:
        run.push(training_args, stage)
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# python -m openllm.training.posttrain init-base
# ---------------------------------------------------------------------------------------------------------------------


def init_base(folder, preset: str = "tiny", tokenizer=None, seed: int = 0, **overrides):
    """Save an untrained OpenLLM model of `preset` with `tokenizer` (default: the synthetic tasks' tokenizer),
    a starting point for the debug recipes and tests."""
    tokenizer = tokenizer or make_example_tokenizer()
    config = get_preset_config(preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               **overrides)
    torch.manual_seed(seed)
    model = OpenLLMForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, str(folder))
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
