"""Reward model training with TRL's `RewardTrainer` on preference pairs (`chosen`/`rejected`, optional `prompt`).

The model is an `OpenLLMForSequenceClassification` with one label: its decoder starts from a causal-LM checkpoint
(the `lm_head` is dropped) and a new `score` head reads the last token. Any other causal LM works the same way
through `AutoModelForSequenceClassification`.

    accelerate launch recipes/reward.py --config recipes/reward_full.yaml
    # CPU, minutes, after recipes/sft_debug.yaml
    python recipes/reward.py --config recipes/reward_debug.yaml

training_summary.json records the pairwise accuracy (`eval_accuracy`: the share of held-out pairs where chosen
scores above rejected) and margin before and after training. The folder is what `recipes/rlhf.py` takes as
`reward_model_name_or_path`.
"""

from trl import ModelConfig, RewardConfig, TrlParser

from openllm.training.posttrain import PostTrainArguments


def main(script_args, training_args, model_args):
    from trl import RewardTrainer

    from openllm.training.posttrain import (
        load_model,
        load_stage_dataset,
        load_tokenizer,
        peft_config,
        require_chat_template,
        run_and_finish,
        setup_logging,
        take_push_to_hub,
    )

    setup_logging()
    # Data: checked before the model is loaded
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "reward", seed=training_args.seed)
    script_args.answer_accuracy = False  # a reward model does not generate

    # Model: causal-LM weights, new 1-output score head
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args, sequence_classification=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    take_push_to_hub(training_args)

    # Trainer
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model, task_type="SEQ_CLS"),
    )
    run_and_finish(trainer, "reward", script_args, training_args, model_args, eval_dataset=eval_dataset)
    return trainer


def make_parser():
    return TrlParser((PostTrainArguments, RewardConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
