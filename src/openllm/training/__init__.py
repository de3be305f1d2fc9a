"""Training runs: the arguments (`arguments`), pretraining (`pretrain`), post-training stages (`posttrain`),
programmatic rewards (`rewards`) and LoRA merging (`merge`)."""
