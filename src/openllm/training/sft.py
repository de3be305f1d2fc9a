"""Supervised fine-tuning (SFT) of a causal LM with TRL's `SFTTrainer`: full, LoRA or QLoRA; conversational
(`messages`), prompt-completion or plain `text` data. Loss is on assistant turns (conversations) or completions only
unless the config says otherwise; `packing: true` packs examples into `max_length` blocks.

    openllm sft --config recipes/sft_debug.yaml          # = python recipes/sft.py --config recipes/sft_debug.yaml
"""

from trl import ModelConfig, SFTTrainer, TrlParser

from . import run
from .arguments import PostTrainArguments, SFTConfig
from .posttrain import (
    load_model,
    load_stage_dataset,
    load_tokenizer,
    peft_config,
    require_chat_template,
    train_and_finish,
)


def make_parser(**kwargs):
    return TrlParser((PostTrainArguments, SFTConfig, ModelConfig), **kwargs)


def main(script_args: PostTrainArguments, training_args: SFTConfig, model_args):
    run.setup(training_args)
    if run.finished(training_args, inputs=[model_args.model_name_or_path, script_args.tokenizer_name_or_path,
                                           script_args.dataset_name]) is not None:
        return None

    # Data: checked before the model is loaded, so a format error costs seconds
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "sft", seed=training_args.seed)
    if training_args.assistant_only_loss is None:
        training_args.assistant_only_loss = data_format in ("messages", "conversational") and (
            "messages" in train_dataset.column_names)

    # Model
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    if training_args.chat_template_path is None:
        require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args)
    push = run.defer_push(training_args)

    # Trainer, then train (resuming when interrupted) and save the finished folder
    trainer = run.with_run_layer(SFTTrainer)(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model),
    )
    train_and_finish(trainer, "sft", script_args, training_args, model_args, eval_dataset=eval_dataset, push=push)
    return trainer
