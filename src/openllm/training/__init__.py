"""Training runs. `run` is the layer every stage shares (resume, crash-safe checkpoints, the finished folder, summary,
card, Hub push); `arguments` holds every stage's dataclasses; `pretrain`, `sft`, `reward`, `dpo` and `rlhf` are the
stages, each with `make_parser()` and `main()` (what `recipes/<stage>.py` and `openllm <stage>` run); `posttrain`
loads models, tokenizers and datasets for post-training; `rewards` are programmatic rewards; `merge` folds a LoRA
adapter into its base model."""
