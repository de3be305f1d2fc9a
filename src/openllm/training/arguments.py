"""Arguments of every training stage, as dataclasses that `TrlParser` fills from a YAML file and the command line.

Pretraining: `DataArguments`, `ModelArguments`, `PretrainConfig`. Post-training: `PostTrainArguments` (or
`RLHFArguments`), one of `SFTConfig`/`RewardConfig`/`DPOConfig`/`GRPOConfig` below, and TRL's `ModelConfig`. Every
training config carries `RunArguments` (resuming and overwriting, read by `openllm.training.run`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers
from transformers import TrainingArguments
from trl import DPOConfig as _DPOConfig
from trl import GRPOConfig as _GRPOConfig
from trl import RewardConfig as _RewardConfig
from trl import ScriptArguments
from trl import SFTConfig as _SFTConfig

from ..data.arguments import DataArguments  # noqa: F401  (pretraining reads it from here too)

TRANSFORMERS_4 = transformers.__version__.startswith("4.")


@dataclass
class RunArguments:
    """What every stage does with an `output_dir` that already holds a run (see `openllm.training.run`)."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete what output_dir holds (a finished run, checkpoints) and train from "
                                         "scratch. Only a folder that an OpenLLM run wrote is removed: one that holds "
                                         "other files, or the input model, is refused. Otherwise a finished run is "
                                         "reported and left as it is, and an interrupted one resumes."})
    auto_resume: bool = field(
        default=True, metadata={"help": "Resume from the newest complete checkpoint-* in output_dir when "
                                        "resume_from_checkpoint is unset."})
    if TRANSFORMERS_4:  # the recipes use transformers 5's name; 4.57 knows only gradient_checkpointing
        activation_checkpointing: Optional[bool] = field(
            default=None, metadata={"help": "Recompute activations in the backward pass (gradient_checkpointing)."})

    def __post_init__(self):
        # transformers 5 reads a warmup_steps below 1 as a fraction of the run; 4.57 takes a fraction only as
        # warmup_ratio (and refuses a float warmup_steps), so the recipes' fractions work on both
        if TRANSFORMERS_4 and isinstance(self.warmup_steps, float) and 0 < self.warmup_steps < 1:
            self.warmup_ratio, self.warmup_steps = self.warmup_steps, 0
        if TRANSFORMERS_4 and self.activation_checkpointing is not None:
            self.gradient_checkpointing = self.activation_checkpointing
        super().__post_init__()


@dataclass
class ModelArguments:
    """The model to pretrain: a preset, optionally resized, or an existing checkpoint to continue from."""

    model_preset: str = field(default="small", metadata={"help": "tiny, tiny-moe, small, medium, large or moe."})
    model_config_overrides: Optional[dict | str] = field(
        default=None, metadata={"help": "OpenLLMConfig fields to change, e.g. {\"num_hidden_layers\": 4} (JSON on the "
                                        "command line). vocab_size and special token ids come from the tokenizer."})
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Continue pretraining this checkpoint instead of starting from a preset."})
    attn_implementation: Optional[str] = field(default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2..."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run Python code shipped with model_name_or_path or the tokenizer (needed "
                                         "for architectures neither transformers nor openllm provides)."})

    def __post_init__(self):
        if isinstance(self.model_config_overrides, str):
            self.model_config_overrides = json.loads(self.model_config_overrides)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class PretrainConfig(RunArguments, TrainingArguments):
    r"""
    `transformers.TrainingArguments` for pretraining. Changed defaults (GPT-2/Llama-style pretraining):

    - `learning_rate` defaults to 3e-4 instead of 5e-5.
    - `lr_scheduler_type` defaults to "cosine" instead of "linear" ("warmup_stable_decay" also works, with
      `lr_scheduler_kwargs: {num_decay_steps: N}`, where N below 1 is a fraction of `max_steps`: 0.2 decays over
      the last 20% of the run).
    - `weight_decay` defaults to 0.1 instead of 0.0; `adam_beta2` to 0.95 instead of 0.999.
    - `logging_steps` defaults to 10 instead of 500; `eval_strategy` to "steps" (every `eval_steps`=200) instead
      of "no"; `save_total_limit` to 3 instead of unlimited.
    - `include_num_input_tokens_seen` defaults to True, so every log line carries the tokens seen.
    - `ddp_find_unused_parameters` defaults to False: every parameter, the MoE experts' included, gets a gradient.
    - `report_to` defaults to "none" (set "tensorboard", "wandb"... to log elsewhere).

    New fields:

    - `precision` ("auto", "bf16", "fp16", "fp32"): "auto" picks bf16 on GPUs that support it, else fp16; on
      CPU, bf16 autocast when the processor has AVX512-BF16 or AMX, else fp32. It sets `bf16`/`fp16`/`use_cpu`,
      `bf16: true` or `fp16: true` in a config is the same as `precision: bf16`/`fp16`.
    - `auto_resume`, `overwrite_output_dir`: see `RunArguments`.
    - `final_eval_documents` (int, 500): after training, `openllm.evaluation.perplexity.evaluate_model` scores up to
      this many held-out documents (perplexity, bits per byte, calibration, samples) into `eval_results.json`, and
      the model card (README.md) is rendered from what was measured; 0 skips both.
    """

    output_dir: Optional[str] = field(default="outputs/pretrain", metadata={"help": "Where the model is written."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine, warmup_stable_decay, linear..."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no, steps or epoch."})
    eval_steps: Optional[float] = field(default=200, metadata={"help": "Evaluate every N optimizer steps."})
    save_total_limit: Optional[int] = field(default=3, metadata={"help": "Keep at most N checkpoints."})
    include_num_input_tokens_seen: str | bool = field(default=True, metadata={"help": "Log the tokens seen."})
    ddp_find_unused_parameters: Optional[bool] = field(default=False, metadata={"help": "See DDP."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "tensorboard, wandb... or none."})
    optim: str = field(default=TrainingArguments.__dataclass_fields__["optim"].default, metadata={
        "help": "muon (Muon for the decoder's weight matrices, AdamW for the rest) or a transformers optimizer name."})
    precision: str = field(default="auto", metadata={"help": "auto, bf16, fp16 or fp32 (see the class docstring)."})
    final_eval_documents: int = field(default=500, metadata={
        "help": "Held-out documents scored after training for eval_results.json and the model card; 0 skips."})

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        explicit = "bf16" if self.bf16 else "fp16" if self.fp16 else None
        if explicit and self.precision not in ("auto", explicit):
            raise ValueError(f"{explicit}=True contradicts precision={self.precision!r}; set only one of them.")
        self.precision = explicit or self.precision
        self._resolve_precision()
        self.optim_muon = self.optim == "muon"  # built by openllm.training.optim; the Trainer knows no Muon
        if self.optim_muon:
            self.optim = TrainingArguments.__dataclass_fields__["optim"].default
        super().__post_init__()
        self._resolve_decay_fraction()

    def _resolve_decay_fraction(self):
        # WSD's decay is usually a share of the run (the last 20%), so `--max_steps` alone rescales the schedule
        decay = (self.lr_scheduler_kwargs or {}).get("num_decay_steps")
        if self.lr_scheduler_type != "warmup_stable_decay" or not isinstance(decay, float) or decay >= 1:
            return
        if decay <= 0 or self.max_steps <= 0:
            raise ValueError(f"lr_scheduler_kwargs.num_decay_steps={decay} is a fraction of max_steps: it needs "
                             "0 < fraction < 1 and max_steps > 0 (or give a whole number of steps).")
        warmup = self.get_warmup_steps(self.max_steps)
        self.lr_scheduler_kwargs = {**self.lr_scheduler_kwargs,
                                    "num_decay_steps": min(round(decay * self.max_steps), self.max_steps - warmup)}

    def _resolve_precision(self):
        on_gpu = torch.cuda.is_available() and not self.use_cpu
        precision = self.precision
        if precision == "auto":
            if on_gpu:
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if cpu_supports_bf16() and not _on_mps() else "fp32"
        if precision == "fp16" and not on_gpu:
            raise ValueError("precision='fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on CPU.")
        self.bf16, self.fp16 = precision == "bf16", precision == "fp16"
        if not on_gpu:
            # transformers only accepts bf16 without a GPU when told it trains on CPU, and accelerate only starts
            # multi-process (gloo) training on CPU when told so
            self.use_cpu = True
        self.precision = precision


def _on_mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# ---------------------------------------------------------------------------------------------------------------------
# Post-training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PostTrainArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus what every OpenLLM post-training recipe reads.

    `dataset_name` also takes a local file/folder or a synthetic `openllm:mix` (see `openllm.tasks`);
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
    answer_max_new_tokens: int = field(
        default=8,
        metadata={"help": "Tokens generated per test question for `answer_accuracy`; worked solutions ending in a "
                          "`#### answer` line (openllm:reasoning, GSM8K) need about 64-256."})
    terse_fraction: float = field(
        default=0.0,
        metadata={"help": "openllm:reasoning data only: share of examples that give the `#### answer` line alone "
                          "instead of a worked solution (see openllm.tasks.reasoning)."})
    log_expert_load: bool = field(
        default=True, metadata={"help": "Log expert utilisation (`expert_load/*`) for Mixture-of-Experts models."})


@dataclass
class RLHFArguments(PostTrainArguments):
    """`PostTrainArguments` plus where the reward comes from: a trained reward model and/or named reward functions."""

    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reward model folder or Hub id (a sequence-classification model, 1 label)."})
    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={"help": "Programmatic rewards from `openllm.training.rewards.REWARD_FUNCS` (e.g. accuracy)."})


@dataclass
class SFTConfig(RunArguments, _SFTConfig):
    """TRL's `SFTConfig` plus `RunArguments`. Changed default: `assistant_only_loss` is None (True on conversational
    data, where TRL needs it to be False otherwise) instead of False."""

    assistant_only_loss: bool | None = field(
        default=None,
        metadata={"help": "Loss on assistant turns only. Defaults to True for conversational data, False otherwise."},
    )


@dataclass
class RewardConfig(RunArguments, _RewardConfig):
    """TRL's `RewardConfig` plus `RunArguments`."""


@dataclass
class DPOConfig(RunArguments, _DPOConfig):
    """TRL's `DPOConfig` plus `RunArguments`."""


@dataclass
class GRPOConfig(RunArguments, _GRPOConfig):
    """TRL's `GRPOConfig` plus `RunArguments`."""


__all__ = ["RunArguments", "DataArguments", "ModelArguments", "PretrainConfig", "cpu_supports_bf16",
           "PostTrainArguments", "RLHFArguments", "SFTConfig", "RewardConfig", "DPOConfig", "GRPOConfig"]
