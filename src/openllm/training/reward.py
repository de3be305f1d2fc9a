"""Reward model training with TRL's `RewardTrainer` on preference pairs (`chosen`/`rejected`, optional `prompt`).

The model is an `OpenLLMForSequenceClassification` with one label: its decoder starts from a causal-LM checkpoint
(the `lm_head` is dropped) and a new `score` head reads the last token. Any other causal LM works the same way
through `AutoModelForSequenceClassification`.

    openllm reward --config recipes/reward_debug.yaml   # = python recipes/reward.py --config recipes/reward_debug.yaml
"""

from trl import ModelConfig, RewardTrainer, TrlParser

from . import run
from .arguments import PostTrainArguments, RewardConfig
from .posttrain import (
    load_model,
    load_stage_dataset,
    load_tokenizer,
    peft_config,
    require_chat_template,
    train_and_finish,
)


def make_parser(**kwargs):
    return TrlParser((PostTrainArguments, RewardConfig, ModelConfig), **kwargs)


def main(script_args: PostTrainArguments, training_args: RewardConfig, model_args):
    run.setup(training_args)
    if run.finished(training_args, inputs=[model_args.model_name_or_path, script_args.tokenizer_name_or_path,
                                           script_args.dataset_name]) is not None:
        return None

    # Data: checked before the model is loaded
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "reward", seed=training_args.seed)
    script_args.answer_accuracy = False  # a reward model does not generate

    # Model: causal-LM weights, new 1-output score head
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args, sequence_classification=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    push = run.defer_push(training_args)

    # Trainer, then train (resuming when interrupted) and save the finished folder
    trainer = run.with_run_layer(RewardTrainer)(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model, task_type="SEQ_CLS"),
    )
    train_and_finish(trainer, "reward", script_args, training_args, model_args, eval_dataset=eval_dataset, push=push)
    return trainer
