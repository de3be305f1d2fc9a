"""Pretraining with transformers' `Trainer`: corpus → tokenizer → packed blocks → model → train → evaluate → save.

`recipes/pretrain.py` is the command-line entry point; `pretrain(data_args, model_args, training_args)` is the same
run as a function. The output folder holds the model (`save_pretrained`, with its code, so it loads with
`trust_remote_code=True` anywhere), the tokenizer, `training_summary.json`, and `checkpoint-*` folders to resume from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from typing import Optional

from transformers import ProgressCallback, Trainer, TrainerCallback

from ..data.corpus import bits_per_byte, load_corpus, pack_corpus
from ..data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from ..hub.push import push_folder
from .arguments import DataArguments, ModelArguments, PretrainConfig
from .optim import create_optimizers

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
# hyperparameters recorded in training_summary.json
SUMMARY_ARGS = ("learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay",
                "adam_beta1", "adam_beta2", "max_grad_norm", "per_device_train_batch_size",
                "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed", "precision", "torch_compile",
                "gradient_checkpointing")


def make_parser():
    """The recipe's `TrlParser`: YAML (`--config`) and command-line flags → (DataArguments, ModelArguments,
    PretrainConfig)."""
    from trl import TrlParser

    return TrlParser((DataArguments, ModelArguments, PretrainConfig))


# ----------------------------------------------------------------------------------------------------------------
# Trainer additions: perplexity, bits per byte, tokens/s and expert utilisation in every log


class ThroughputMeter(TrainerCallback):
    """Tokens per second between two training logs; evaluation time is left out."""

    def __init__(self):
        self.mark = None

    def _reset(self, state):
        self.mark = (time.perf_counter(), state.num_input_tokens_seen)

    def on_train_begin(self, args, state, control, **kwargs):
        self._reset(state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._reset(state)

    def measure(self, state) -> dict:
        if self.mark is None:
            return {}
        (t0, n0), now = self.mark, time.perf_counter()
        self._reset(state)
        return {"tokens_per_second": (state.num_input_tokens_seen - n0) / max(now - t0, 1e-9)}


class ThroughputProgressCallback(ProgressCallback):
    """The usual progress bar, with loss and tokens/s shown next to it."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and "tokens_per_second" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", tok_s=f"{logs['tokens_per_second']:,.0f}",
                                          refresh=False)
        super().on_log(args, state, control, logs=logs, **kwargs)


def expert_utilisation(model) -> tuple[dict, dict]:
    """(log entries, per-layer load) for an MoE model: `expert_load/layer_i` is the busiest expert's share of the
    routed tokens times the number of experts (1.0 = perfectly balanced, E = one expert takes everything)."""
    get_load = getattr(model, "get_expert_load", None)
    load = get_load(reset=True) if get_load is not None else {}
    logs = {f"expert_load/layer_{i}": float(frac.max() * frac.numel()) for i, frac in load.items()}
    return logs, {str(i): [round(float(x), 4) for x in frac] for i, frac in load.items()}


class PretrainTrainer(Trainer):
    """`Trainer` whose logs also carry tokens/s, perplexity, bits per byte and, for MoE models, expert load."""

    def __init__(self, *args, eval_tokens_per_byte: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_tokens_per_byte = eval_tokens_per_byte
        self.expert_load = {}
        self.throughput = ThroughputMeter()
        self.add_callback(self.throughput)
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(ThroughputProgressCallback)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update(self.throughput.measure(self.state))
            load_logs, load = expert_utilisation(self.accelerator.unwrap_model(self.model))
            logs.update(load_logs)
            self.expert_load = load or self.expert_load
        for prefix in ("eval_", "test_"):
            if f"{prefix}loss" in logs:
                loss = logs[f"{prefix}loss"]
                logs[f"{prefix}perplexity"] = math.exp(min(loss, 80.0))
                if self.eval_tokens_per_byte:
                    logs[f"{prefix}bits_per_byte"] = bits_per_byte(loss, self.eval_tokens_per_byte)
        super().log(logs, *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def check_block_size(block_size: int, config) -> None:
    if block_size > config.max_position_embeddings:
        raise ValueError(f"block_size={block_size} is larger than the model's context of "
                         f"{config.max_position_embeddings} positions (max_position_embeddings). Lower block_size or "
                         f"raise max_position_embeddings in model_config_overrides.")


def get_model_config(model_args: ModelArguments):
    from transformers import AutoConfig

    from ..models import get_preset_config

    overrides = dict(model_args.model_config_overrides or {})
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **overrides)
    return get_preset_config(model_args.model_preset, **overrides)


def get_tokenizer(data_args: DataArguments, model_args: ModelArguments, corpus, output_dir: str, max_length: int):
    """The tokenizer named in the arguments, else the one saved in `output_dir` by an earlier (interrupted) run of
    the same recipe, else a new one trained on the training split and saved to `output_dir`."""
    name = data_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name:
        return load_tokenizer(name)
    if os.path.isfile(os.path.join(output_dir, "tokenizer.json")):
        logger.info("Reusing the tokenizer in %s", output_dir)
        return load_tokenizer(output_dir)
    texts = (batch["text"] for batch in corpus.train.iter(batch_size=1000))
    tokenizer = train_tokenizer(texts, data_args.vocab_size, data_args.tokenizer_type, length=len(corpus.train),
                                model_max_length=max_length)
    save_tokenizer(tokenizer, output_dir)
    return tokenizer


def get_model(model_args: ModelArguments, config, tokenizer):
    from transformers import AutoModelForCausalLM

    if len(tokenizer) > config.vocab_size and model_args.model_name_or_path:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path} only "
                         f"{config.vocab_size} embeddings; continue pretraining with the model's own tokenizer.")
    if not model_args.model_name_or_path:
        config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.use_cache = False  # no key/value cache while training; switched back on for the saved model
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, config=config, **kwargs)
    return AutoModelForCausalLM.from_config(config, **kwargs)


def describe_hardware(args: PretrainConfig) -> str:
    import torch

    if torch.cuda.is_available() and not args.use_cpu:
        device = torch.cuda.get_device_name()
    else:
        device = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                device = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        device = f"CPU {device} ({os.cpu_count()} cores)"
    precision = {"bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}.get(args.precision, "fp32")
    return f"{args.world_size} × {device}, {precision}"


def evaluate_and_card(model, tokenizer, corpus, data_args: DataArguments, training_args: PretrainConfig) -> dict:
    """Score held-out documents into `eval_results.json` (with samples and a reliability diagram), then render
    the model card from the folder."""
    from ..evaluation.perplexity import evaluate_model
    from ..hub.model_card import write_model_card

    texts = corpus.eval["text"][: training_args.final_eval_documents]
    prompts = [" ".join(t.split()[:6]) for t in texts[:3]]
    results = evaluate_model(
        model, tokenizer, texts, block_size=data_args.block_size, sample_prompts=prompts,
        output_dir=training_args.output_dir, model_name=training_args.output_dir, show_progress=True,
        dataset_info={"name": data_args.dataset_name, "split": "held-out", "documents": len(texts)},
    )
    card = write_model_card(training_args.output_dir)
    logger.info("Wrote eval_results.json and the model card %s", card)
    return results


# ----------------------------------------------------------------------------------------------------------------
# The run


def pretrain(data_args: DataArguments, model_args: ModelArguments, training_args: PretrainConfig,
             callbacks: Optional[list] = None) -> dict:
    """Pretrain a model as the arguments say and return the training summary (also written to
    `output_dir/training_summary.json`)."""
    import transformers
    from transformers import DataCollatorForLanguageModeling, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("openllm").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    output_dir = training_args.output_dir

    config = get_model_config(model_args)
    check_block_size(data_args.block_size, config)  # before minutes of data processing, not after

    with training_args.main_process_first(desc="data and tokenizer"):
        corpus = load_corpus(data_args.dataset_name, data_args.text_column, config_name=data_args.dataset_config,
                             splits=data_args.dataset_splits, sample_by=data_args.sample_by,
                             min_chars=data_args.min_chars, eval_fraction=data_args.eval_fraction,
                             max_documents=data_args.max_documents, num_proc=data_args.num_proc)
        tokenizer = get_tokenizer(data_args, model_args, corpus, output_dir, config.max_position_embeddings)
        train_blocks, eval_blocks = pack_corpus(corpus, tokenizer, data_args.block_size, data_args.num_proc)
    corpus.stats["vocab_size"] = len(tokenizer)

    model = get_model(model_args, config, tokenizer)
    n_params = model.num_parameters()
    logger.info("Model: %s parameters (%s), %s layers, hidden %s%s", f"{n_params:,}",
                model_args.model_name_or_path or f"preset {model_args.model_preset}", config.num_hidden_layers,
                config.hidden_size, f", {config.num_experts} experts" if config.num_experts else "")

    push = training_args.push_to_hub
    training_args.push_to_hub = False  # pushed once at the end, so an offline run still trains and saves
    if eval_blocks is None:
        training_args.eval_strategy = "no"
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
        eval_tokens_per_byte=corpus.stats.get("eval_tokens_per_byte"),
        optimizers=create_optimizers(model, training_args),
    )

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and training_args.auto_resume and os.path.isdir(output_dir):
        checkpoint = get_last_checkpoint(output_dir)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)
    try:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        if training_args.world_size == 1 and trainer.state.global_step > 0:
            trainer._save_checkpoint(trainer.model, trial=None)
            logger.warning("Interrupted at step %d; saved a checkpoint in %s. Run the same command to resume.",
                           trainer.state.global_step, output_dir)
        raise

    metrics = {"train_loss": train_result.metrics.get("train_loss")}
    if eval_blocks is not None:
        # the Trainer may just have evaluated at this very step
        last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else {}
        if "eval_loss" in last and last.get("step") == trainer.state.global_step:
            eval_metrics = last
        else:
            eval_metrics = trainer.evaluate()
        metrics.update(eval_loss=eval_metrics["eval_loss"], perplexity=eval_metrics["eval_perplexity"])
        if "eval_bits_per_byte" in eval_metrics:
            metrics["bits_per_byte"] = eval_metrics["eval_bits_per_byte"]
    metrics.update(tokens_seen=trainer.state.num_input_tokens_seen, num_parameters=n_params)
    if trainer.expert_load:
        metrics["expert_load"] = trainer.expert_load

    model.config.use_cache = True
    trainer.save_model(output_dir)
    summary = {
        "stage": "pretrain",
        "base_model": model_args.model_name_or_path,
        "datasets": [data_args.dataset_name],
        "data": corpus.stats,
        "training_args": {
            **{k: getattr(training_args, k) for k in SUMMARY_ARGS},
            "model_preset": None if model_args.model_name_or_path else model_args.model_preset,
            "block_size": data_args.block_size,
            "tokenizer_type": None if data_args.tokenizer_name_or_path else data_args.tokenizer_type,
            "world_size": training_args.world_size,
            "global_batch_size": training_args.per_device_train_batch_size
            * training_args.gradient_accumulation_steps * training_args.world_size,
            "tokens_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size * data_args.block_size,
            "resumed_from": checkpoint,
        },
        "log_history": trainer.state.log_history,
        "metrics": metrics,
        "hardware": describe_hardware(training_args),
        "train_runtime_s": train_result.metrics.get("train_runtime"),
    }
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, output_dir)
        with open(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2, default=str)
            f.write("\n")
        logger.info("Saved the model, tokenizer and %s to %s", SUMMARY_FILE, output_dir)
        if training_args.final_eval_documents and corpus.eval is not None:
            evaluate_and_card(model, tokenizer, corpus, data_args, training_args)
        if push:
            push_folder(output_dir, training_args.hub_model_id, private=training_args.hub_private_repo,
                        token=training_args.hub_token, commit_message="Upload pretrained OpenLLM model")
    return summary


__all__ = ["make_parser", "pretrain", "PretrainTrainer", "check_block_size", "get_model_config", "get_tokenizer",
           "get_model", "describe_hardware", "SUMMARY_FILE"]
