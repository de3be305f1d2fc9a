"""Pretrain an OpenLLM model (dense or MoE) from one YAML file: data, tokenizer, model preset, training arguments.

Usage:
    python recipes/pretrain.py --config recipes/pretrain_quickstart.yaml
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/pretrain.py \
        --config recipes/pretrain_small.yaml
    # any field can be overridden on the command line:
    python recipes/pretrain.py --config recipes/pretrain_small.yaml --max_steps 100 --output_dir /tmp/run

The output folder holds the model, its tokenizer and training_summary.json; rerunning the same command after an
interruption resumes from the last checkpoint-* in it.
"""

from openllm.configs import DataArguments, ModelArguments, PretrainConfig
from openllm.pretrain import make_parser, pretrain


def main(data_args: DataArguments, model_args: ModelArguments, training_args: PretrainConfig):
    summary = pretrain(data_args, model_args, training_args)
    metrics = summary["metrics"]
    if "eval_loss" in metrics:
        print(f"eval loss {metrics['eval_loss']:.4f} · perplexity {metrics['perplexity']:.2f}"
              + (f" · {metrics['bits_per_byte']:.4f} bits/byte" if "bits_per_byte" in metrics else ""))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
