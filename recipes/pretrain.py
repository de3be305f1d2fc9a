"""Pretrain an OpenLLM model (dense or MoE) from one YAML file: data, tokenizer, model preset, training arguments.

Usage:
    python recipes/pretrain.py --config recipes/pretrain_quickstart.yaml
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/pretrain.py \
        --config recipes/pretrain_small.yaml
    # any field can be overridden on the command line:
    python recipes/pretrain.py --config recipes/pretrain_small.yaml --max_steps 100 --output_dir /tmp/run
    # the same run through the command line tool:
    openllm pretrain --config recipes/pretrain_quickstart.yaml

The steps (`openllm.training.pretrain.pretrain`): check the model config → load and clean the corpus → train or load
the tokenizer → pack blocks → build the model → train (resuming from the newest complete checkpoint in output_dir) →
evaluate on held-out documents → save the model folder (model, tokenizer, training_summary.json, eval_results.json,
model card) as one unit → push if asked. Rerunning a finished command reports the run and changes nothing.
"""

from openllm.training.pretrain import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
