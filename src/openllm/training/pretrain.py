"""Pretraining with transformers' `Trainer`: corpus → tokenizer → packed blocks → model → train → evaluate → save.

    python recipes/pretrain.py --config recipes/pretrain_quickstart.yaml      # or: openllm pretrain --config ...

`pretrain(data_args, model_args, training_args)` is the run as a function; `main` adds the report printed at the end.
The output folder holds the model (`save_pretrained`, with its code, so it loads with `trust_remote_code=True`
anywhere), the tokenizer, `training_summary.json`, `eval_results.json`, the model card, and `checkpoint-*` folders
to resume from (see `openllm.training.run`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    ProgressCallback,
    Trainer,
    TrainerCallback,
)
from trl import TrlParser

from .. import atomic
from ..data.corpus import bits_per_byte, load_corpus, pack_corpus
from ..data.prepare import PrepareArguments, prepare, sources_of
from ..data.prepared import TOKENIZER_DIR, PreparedDataset, check_compatible, is_prepared, read_manifest
from ..data.streaming import StreamingDataset
from ..data.tokenizer import save_tokenizer, train_tokenizer
from ..evaluation.perplexity import evaluate_model
from ..models import get_preset_config, loading
from . import run
from .arguments import DataArguments, ModelArguments, PretrainConfig
from .optim import create_optimizers

logger = logging.getLogger(__name__)

# a tokenizer trained by this run, kept for a resumed run until the finished folder holds it (see run.remove_run_files)
TRAINED_TOKENIZER = ".tmp-tokenizer"


def make_parser(**kwargs):
    """`TrlParser`: YAML (`--config`) and command-line flags → (DataArguments, ModelArguments, PretrainConfig)."""
    return TrlParser((DataArguments, ModelArguments, PretrainConfig), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Trainer additions: perplexity, bits per byte and tokens/s in every log


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


class PretrainTrainer(run.RunTrainerMixin, Trainer):
    """`Trainer` with the run layer (staged checkpoints, exact resume, expert load), whose logs also carry tokens/s,
    perplexity and bits per byte."""

    def __init__(self, *args, eval_tokens_per_byte: Optional[float] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_tokens_per_byte = eval_tokens_per_byte
        self.throughput = ThroughputMeter()
        self.add_callback(self.throughput)
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(ThroughputProgressCallback)

    def get_train_dataloader(self):
        """A stream splits itself by rank and keeps its own position, so it is read by a plain loader in this
        process (its background thread does the tokenizing), not sharded again by accelerate."""
        if not isinstance(self.train_dataset, StreamingDataset):
            return super().get_train_dataloader()
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                                           collate_fn=self.data_collator, num_workers=0)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update(self.throughput.measure(self.state))
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
    overrides = dict(model_args.model_config_overrides or {})
    if model_args.model_name_or_path:
        return loading.load_config(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code,
                                   **overrides)
    return get_preset_config(model_args.model_preset, **overrides)


def get_tokenizer(data_args: DataArguments, model_args: ModelArguments, corpus, output_dir: str, max_length: int):
    """The tokenizer named in the arguments, else the one an interrupted run of the same recipe trained and kept in
    `output_dir`, else a new one trained on the training split (and kept there, so a resumed run encodes the same)."""
    name = data_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name:
        return loading.load_tokenizer(name, trust_remote_code=model_args.trust_remote_code)
    kept = os.path.join(output_dir, TRAINED_TOKENIZER)
    if os.path.isfile(os.path.join(kept, "tokenizer.json")):
        logger.info("Reusing the tokenizer this run trained (%s)", kept)
        return loading.load_tokenizer(kept)
    texts = (batch["text"] for batch in corpus.train.iter(batch_size=1000))
    tokenizer = train_tokenizer(texts, data_args.vocab_size, data_args.tokenizer_type, length=len(corpus.train),
                                model_max_length=max_length)
    with atomic.folder(kept) as tmp:
        save_tokenizer(tokenizer, str(tmp))
    return tokenizer


def get_model(model_args: ModelArguments, config, tokenizer):
    if len(tokenizer) > config.vocab_size and model_args.model_name_or_path:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path} only "
                         f"{config.vocab_size} embeddings; continue pretraining with the model's own tokenizer.")
    if not model_args.model_name_or_path:
        config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.use_cache = False  # no key/value cache while training; switched back on for the saved model
    kwargs = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    if model_args.model_name_or_path:  # float32 master weights: autocast makes the low-precision copies
        return loading.load_model(model_args.model_name_or_path, config=config, dtype=torch.float32, device=None,
                                  trust_remote_code=model_args.trust_remote_code, **kwargs)
    return AutoModelForCausalLM.from_config(config, **kwargs)


def final_metrics(trainer, train_output, eval_blocks, num_parameters: int) -> dict:
    """train loss, held-out loss/perplexity/bits per byte at the last step, tokens seen, expert load."""
    metrics = {"train_loss": train_output.metrics.get("train_loss")}
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
    metrics.update(tokens_seen=trainer.state.num_input_tokens_seen, num_parameters=num_parameters)
    if trainer.run_state["expert_load_total"]:
        metrics["expert_load"] = trainer.expert_load_summary()
    return metrics


def metrics_before_training(trainer, eval_blocks) -> dict:
    """Held-out loss, perplexity and bits per byte of the model before training (`initial_*`)."""
    if eval_blocks is None:
        return {}
    measured = trainer.evaluate()
    names = {"eval_loss": "initial_eval_loss", "eval_perplexity": "initial_perplexity",
             "eval_bits_per_byte": "initial_bits_per_byte"}
    return {names[k]: round(v, 4) for k, v in measured.items() if k in names}


def held_out_evaluation(model, tokenizer, data: "PretrainData", data_args: DataArguments,
                        training_args: PretrainConfig):
    """`extras` for `run.save_final`: score held-out documents into `folder/eval_results.json` (with samples and a
    reliability diagram), which the model card then reports."""
    def evaluate(folder: Path):
        texts = data.eval_texts(training_args.final_eval_documents)
        prompts = [" ".join(t.split()[:6]) for t in texts[:3]]
        evaluate_model(model, tokenizer, texts, block_size=data_args.block_size, sample_prompts=prompts,
                       output_dir=str(folder), model_name=training_args.output_dir, show_progress=True,
                       dataset_info={"name": data_args.dataset_name, "split": "held-out", "documents": len(texts)})

    if training_args.final_eval_documents and data.eval is not None:
        return evaluate
    return None


# ----------------------------------------------------------------------------------------------------------------
# The data: processed in memory, or prepared token shards


@dataclass
class PretrainData:
    """What a run trains and evaluates on, whichever way it was made."""

    train: object  # a map-style dataset of {"input_ids": block_size tokens}
    eval: Optional[object]
    tokenizer: object
    stats: dict
    sources: list[str]  # the datasets, as the model card names them
    eval_texts: object = field(default=lambda limit: [])  # limit → held-out documents' text
    identity: Optional[list[str]] = None  # what the checkpoint records, so a resumed run sees the same data

    def __post_init__(self):
        self.identity = self.identity or self.sources


def in_memory_data(data_args: DataArguments, model_args: ModelArguments, training_args, max_length: int):
    """Load, clean, deduplicate, tokenize and pack in this process (cached by `datasets`): small corpora."""
    with training_args.main_process_first(desc="data and tokenizer"):
        corpus = load_corpus(data_args.dataset_name, data_args.text_column, config_name=data_args.dataset_config,
                             splits=data_args.dataset_splits, sample_by=data_args.sample_by,
                             min_chars=data_args.min_chars, eval_fraction=data_args.eval_fraction,
                             max_documents=data_args.max_documents, num_proc=data_args.num_proc)
        tokenizer = get_tokenizer(data_args, model_args, corpus, training_args.output_dir, max_length)
        train_blocks, eval_blocks = pack_corpus(corpus, tokenizer, data_args.block_size, data_args.num_proc)
    return PretrainData(train_blocks, eval_blocks, tokenizer, corpus.stats, [data_args.dataset_name],
                        lambda limit: corpus.eval["text"][:limit] if corpus.eval is not None else [])


def prepared_folder(data_args: DataArguments) -> Optional[str]:
    """The prepared folder this run reads: `dataset_name` when it is one, else `prepared_data_dir`."""
    if is_prepared(data_args.dataset_name):
        return data_args.dataset_name
    return data_args.prepared_data_dir


def prepared_data(folder: str, data_args: DataArguments, model_args: ModelArguments, training_args):
    """Memory-map token shards that `openllm prepare` wrote. A `prepared_data_dir` is prepared from the source first
    by the main process, or continued, or found finished with these very settings (a cheap check); the other
    processes, on any node, only read it (so it must be on a shared filesystem, or copied to every node)."""
    if folder != data_args.dataset_name:
        with training_args.main_process_first(desc="prepared data"):
            if training_args.process_index == 0:
                prepare(data_args, PrepareArguments(output_dir=folder))
            elif not Path(folder, "manifest.json").exists():
                raise FileNotFoundError(
                    f"Process {training_args.process_index} finds no prepared data in {folder}: the main process "
                    "prepared it on another node. Put prepared_data_dir on a shared filesystem, or copy it to every "
                    "node (or prepare it there first with `openllm prepare --config ...`).")
    manifest = read_manifest(folder)
    name = data_args.tokenizer_name_or_path or model_args.model_name_or_path or str(Path(folder) / TOKENIZER_DIR)
    tokenizer = loading.load_tokenizer(name, trust_remote_code=model_args.trust_remote_code)
    check_compatible(manifest, tokenizer, data_args.block_size, folder)
    train = PreparedDataset(folder, "train", seed=training_args.seed)
    if len(train) == 0:
        raise ValueError(f"{folder} has no training row of {data_args.block_size} tokens.")
    evaluation = PreparedDataset(folder, "eval") if manifest["stats"]["eval_rows"] else None
    stats = {**manifest["stats"], "prepared_data": str(folder), "mixture": train.mixture()}
    settings_hash = run.short_hash(manifest["settings"])
    return PretrainData(train, evaluation, tokenizer, stats, [s["id"] for s in manifest["sources"]],
                        evaluation.eval_texts if evaluation is not None else (lambda limit: []),
                        identity=[f"{folder} (prepared {settings_hash})"])


def streaming_data(data_args: DataArguments, model_args: ModelArguments, training_args):
    """Read, tokenize and pack the source on the fly, each rank its own part (`openllm.data.streaming`)."""
    name = data_args.tokenizer_name_or_path or model_args.model_name_or_path
    if not name:
        raise ValueError("streaming: true needs a trained tokenizer: set tokenizer_name_or_path (a stream cannot be "
                         "read twice to train one first).")
    sources = sources_of(data_args)
    if len(sources) > 1 and any(s.weight != 1.0 for s in sources):
        raise ValueError("Mixture weights need prepared data (`openllm prepare`); a stream reads its sources one "
                         "after another. Drop streaming, or the weights.")
    if not training_args.max_steps or training_args.max_steps < 0:
        raise ValueError("streaming: true needs max_steps: a stream has no length to count epochs by.")
    tokenizer = loading.load_tokenizer(name, trust_remote_code=model_args.trust_remote_code)
    stream = StreamingDataset([(s.id, s.config, s.splits, s.text_column) for s in sources], tokenizer,
                              data_args.block_size, rank=training_args.process_index,
                              world_size=training_args.world_size, min_chars=data_args.min_chars,
                              sample_by=data_args.sample_by, eval_tokens=data_args.eval_tokens)
    evaluation = [{"input_ids": row} for row in stream.eval_rows] or None
    stats = {"streaming": True, "eval_documents": len(stream.eval_texts), "eval_rows": len(stream.eval_rows),
             "eval_tokens_per_byte": stream.eval_tokens / max(stream.eval_bytes, 1),
             "eval_tokens": len(stream.eval_rows) * data_args.block_size}
    return PretrainData(stream, evaluation, tokenizer, stats, [s.id for s in sources],
                        lambda limit: stream.eval_texts[:limit], identity=[f"{s.id} (stream)" for s in sources])


def pretrain_data(data_args: DataArguments, model_args: ModelArguments, training_args, max_length: int):
    """Prepared shards when the run names a prepared folder (`streaming` then reads the source into it as a
    stream), else a stream when `streaming`, else the corpus processed in memory."""
    folder = prepared_folder(data_args)
    if folder is not None:
        return prepared_data(folder, data_args, model_args, training_args)
    if data_args.streaming:
        return streaming_data(data_args, model_args, training_args)
    return in_memory_data(data_args, model_args, training_args, max_length)


# ----------------------------------------------------------------------------------------------------------------
# The run


def inputs_of(data_args: DataArguments, model_args: ModelArguments) -> list:
    """The paths a pretraining run reads, which `overwrite_output_dir` must never delete."""
    return [model_args.model_name_or_path, data_args.tokenizer_name_or_path, data_args.dataset_name,
            data_args.prepared_data_dir]


def pretrain(data_args: DataArguments, model_args: ModelArguments, training_args: PretrainConfig,
             callbacks: Optional[list] = None) -> dict:
    """Pretrain a model as the arguments say and return the training summary (also written to
    `output_dir/training_summary.json`). A finished `output_dir` is reported and returned unchanged."""
    run.setup(training_args)
    finished = run.prepare_output_dir(training_args, inputs=inputs_of(data_args, model_args))
    if finished is not None:
        return finished

    # Model configuration: checked before minutes of data processing, not after
    config = get_model_config(model_args)
    check_block_size(data_args.block_size, config)

    # Data and tokenizer
    data = pretrain_data(data_args, model_args, training_args, config.max_position_embeddings)
    tokenizer, train_blocks, eval_blocks = data.tokenizer, data.train, data.eval
    data.stats["vocab_size"] = len(tokenizer)

    # Model
    model = get_model(model_args, config, tokenizer)
    n_params = model.num_parameters()
    logger.info("Model: %s parameters (%s), %s layers, hidden %s%s", f"{n_params:,}",
                model_args.model_name_or_path or f"preset {model_args.model_preset}", config.num_hidden_layers,
                config.hidden_size, f", {config.num_experts} experts" if config.num_experts else "")

    # Trainer
    push = run.defer_push(training_args)
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
        eval_tokens_per_byte=data.stats.get("eval_tokens_per_byte"),
        optimizers=create_optimizers(model, training_args),
    )

    # Train (resuming from the newest complete checkpoint), evaluate, save the finished folder, push
    trainer.run_state["data"] = run.data_identity(datasets=data.identity, tokenizer=tokenizer,
                                                  length=data_args.block_size,
                                                  global_order=not isinstance(train_blocks, StreamingDataset))
    checkpoint = run.resolve_checkpoint(training_args)
    initial = run.initial_metrics(trainer, checkpoint, lambda: metrics_before_training(trainer, eval_blocks))
    train_output = run.train(trainer, checkpoint)
    metrics = {**initial, **final_metrics(trainer, train_output, eval_blocks, n_params)}
    model.config.use_cache = True
    summary = run.training_summary(
        trainer, "pretrain", training_args, train_output, base_model=model_args.model_name_or_path,
        datasets=data.sources, data=data.stats, metrics=metrics,
        extra_args={"model_preset": None if model_args.model_name_or_path else model_args.model_preset,
                    "block_size": data_args.block_size,
                    "tokenizer_type": None if data_args.tokenizer_name_or_path else data_args.tokenizer_type,
                    "tokens_per_step": training_args.per_device_train_batch_size
                    * training_args.gradient_accumulation_steps * training_args.world_size * data_args.block_size},
    )
    run.save_final(trainer, training_args, summary,
                   extras=held_out_evaluation(model, tokenizer, data, data_args, training_args))
    if push:
        run.push(training_args, "pretrain")
    return summary


def main(data_args: DataArguments, model_args: ModelArguments, training_args: PretrainConfig):
    """`pretrain`, then (main process) the report a person wants to see: the numbers, samples, how to load it."""
    run.setup(training_args)
    if (summary := run.finished(training_args, inputs=inputs_of(data_args, model_args))) is not None:
        return summary
    summary = pretrain(data_args, model_args, training_args)
    if training_args.should_save:
        report(training_args.output_dir, summary)
    return summary


def report(output_dir: str, summary: dict):
    metrics = summary["metrics"]
    print(f"\nTrained {metrics['num_parameters']:,} parameters on {metrics['tokens_seen']:,} tokens in "
          f"{summary['train_runtime_s'] or 0:.0f} s ({summary['hardware']}).")
    results_file = os.path.join(output_dir, "eval_results.json")
    if os.path.isfile(results_file):
        with open(results_file) as f:
            results = json.load(f)
        m = results["metrics"]
        print(f"Held-out: perplexity {m['perplexity']:.2f} · {m['bits_per_byte']:.4f} bits/byte · "
              f"next-token accuracy {m['accuracy']:.3f} · ECE {m['ece']:.4f}")
        for sample in results.get("samples", []):
            print(f"  {sample['prompt']!r} → {sample['completion']!r}")
    elif "eval_loss" in metrics:
        print(f"eval loss {metrics['eval_loss']:.4f} · perplexity {metrics['perplexity']:.2f}")
    print(f"\nModel, tokenizer and model card: {output_dir}\n"
          f"  AutoModelForCausalLM.from_pretrained({output_dir!r}, trust_remote_code=True)")


__all__ = ["make_parser", "main", "pretrain", "PretrainTrainer", "check_block_size", "get_model_config",
           "get_tokenizer", "get_model"]
