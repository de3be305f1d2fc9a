"""Data for every stage: pretraining corpora (`corpus`), tokenizers (`tokenizer`), post-training datasets and the
synthetic checkable tasks (`post_training`)."""
