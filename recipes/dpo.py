"""Direct Preference Optimization (DPO) with TRL's `DPOTrainer` on `prompt`/`chosen`/`rejected` pairs (strings or
conversations), full or LoRA. The reference model is TRL's: a frozen copy of the starting model, or, with LoRA, the
same model with its adapter switched off.

    accelerate launch recipes/dpo.py --config recipes/dpo_full.yaml
    # CPU, minutes, after recipes/sft_debug.yaml
    python recipes/dpo.py --config recipes/dpo_debug.yaml

training_summary.json records the preference accuracy and reward margin on the test pairs before and after
(`initial_eval_rewards/accuracies` → `eval_rewards/accuracies`, `eval_rewards/margins`).
"""

from trl import DPOConfig, ModelConfig, TrlParser

from openllm.training.posttrain import PostTrainArguments


def main(script_args, training_args, model_args):
    from trl import DPOTrainer

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
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "dpo", seed=training_args.seed)

    # Model (the reference model is created by DPOTrainer)
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args)
    take_push_to_hub(training_args)

    # Trainer
    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model),
    )
    run_and_finish(trainer, "dpo", script_args, training_args, model_args, eval_dataset=eval_dataset)
    return trainer


def make_parser():
    return TrlParser((PostTrainArguments, DPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
