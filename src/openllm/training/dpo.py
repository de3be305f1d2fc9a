"""Direct Preference Optimization (DPO) with TRL's `DPOTrainer` on `prompt`/`chosen`/`rejected` pairs (strings or
conversations), full or LoRA. The reference model is TRL's: a frozen copy of the starting model, or, with LoRA, the
same model with its adapter switched off.

    openllm dpo --config recipes/dpo_debug.yaml          # = python recipes/dpo.py --config recipes/dpo_debug.yaml
"""

from trl import DPOTrainer, ModelConfig, TrlParser

from . import run
from .arguments import DPOConfig, PostTrainArguments
from .posttrain import (
    load_model,
    load_stage_dataset,
    load_tokenizer,
    peft_config,
    require_chat_template,
    train_and_finish,
)


def make_parser(**kwargs):
    return TrlParser((PostTrainArguments, DPOConfig, ModelConfig), **kwargs)


def main(script_args: PostTrainArguments, training_args: DPOConfig, model_args):
    run.setup(training_args)
    if run.finished(training_args, inputs=[model_args.model_name_or_path, script_args.tokenizer_name_or_path,
                                           script_args.dataset_name]) is not None:
        return None

    # Data: checked before the model is loaded
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "dpo", seed=training_args.seed)

    # Model (the reference model is created by DPOTrainer)
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args)
    push = run.defer_push(training_args)

    # Trainer, then train (resuming when interrupted) and save the finished folder
    trainer = run.with_run_layer(DPOTrainer)(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model),
    )
    train_and_finish(trainer, "dpo", script_args, training_args, model_args, eval_dataset=eval_dataset, push=push)
    return trainer
