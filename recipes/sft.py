"""Supervised fine-tuning (SFT) of a causal LM with TRL's `SFTTrainer`: full, LoRA or QLoRA; conversational
(`messages`), prompt-completion or plain `text` data. Loss is on assistant turns (conversations) or completions only
unless the config says otherwise; `packing: true` packs examples into `max_length` blocks.

    # one GPU / several GPUs (DDP)
    accelerate launch recipes/sft.py --config recipes/sft_full.yaml
    accelerate launch recipes/sft.py --config recipes/sft_lora.yaml
    # CPU, minutes: an untrained tiny model on the synthetic checkable tasks
    python -m openllm.training.posttrain init-base outputs/tiny-base --preset tiny
    python recipes/sft.py --config recipes/sft_debug.yaml

Any config key can be overridden on the command line (`--learning_rate 1e-4`); unknown keys are errors. A LoRA run
saves an adapter: `openllm merge --adapter OUTPUT_DIR --output-dir MERGED` makes a standalone model of it.
"""

from trl import ModelConfig, TrlParser

from openllm.training.posttrain import OpenLLMSFTConfig, PostTrainArguments


def main(script_args, training_args, model_args):
    from trl import SFTTrainer

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
    take_push_to_hub(training_args)

    # Trainer
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(model_args, model),
    )
    run_and_finish(trainer, "sft", script_args, training_args, model_args, eval_dataset=eval_dataset)
    return trainer


def make_parser():
    return TrlParser((PostTrainArguments, OpenLLMSFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
