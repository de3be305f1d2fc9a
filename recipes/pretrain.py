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

import json
import os

from openllm.training.arguments import DataArguments, ModelArguments, PretrainConfig
from openllm.training.pretrain import make_parser, pretrain


def main(data_args: DataArguments, model_args: ModelArguments, training_args: PretrainConfig):
    summary = pretrain(data_args, model_args, training_args)
    if not training_args.should_save:
        return
    report(training_args.output_dir, summary)


def report(output_dir: str, summary: dict):
    """What a person wants to see at the end: the numbers, a few samples, and how to load the model."""
    metrics = summary["metrics"]
    print(f"\nTrained {metrics['num_parameters']:,} parameters on {metrics['tokens_seen']:,} tokens in "
          f"{summary['train_runtime_s'] or 0:.0f} s ({summary['hardware']}).")
    results_file = os.path.join(output_dir, "eval_results.json")
    if os.path.isfile(results_file):
        with open(results_file) as f:
            results = json.load(f)
        m = results["metrics"]
        print(f"Held-out: perplexity {m['perplexity']:.2f} · {m['bits_per_byte']:.4f} bits/byte · "
              f"next-token accuracy {m['accuracy']:.3f} · ECE {m['ece']:.4f}")
        for sample in results.get("samples", []):
            print(f"  {sample['prompt']!r} → {sample['completion']!r}")
    elif "eval_loss" in metrics:
        print(f"eval loss {metrics['eval_loss']:.4f} · perplexity {metrics['perplexity']:.2f}")
    print(f"\nModel, tokenizer and model card: {output_dir}\n"
          f"  AutoModelForCausalLM.from_pretrained({output_dir!r}, trust_remote_code=True)")


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
