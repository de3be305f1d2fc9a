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

The same run through the command line tool: `openllm sft --config recipes/<config>.yaml [--key value ...]`. The steps
are in `openllm.training.sft.main`.
"""

from openllm.training.sft import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
