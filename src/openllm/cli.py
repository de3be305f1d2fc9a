"""`openllm` command line: one subcommand per module, imported only when used so `openllm --help` stays fast.

Commands come in the order of the chain. The training stages (pretrain, sft, reward, dpo, rlhf) run the same
`make_parser()` and `main()` as `recipes/<stage>.py`, so `openllm sft --config recipes/sft_debug.yaml --key value` and
`accelerate launch -m openllm sft --config ...` do exactly what the recipe script does."""

import argparse
import importlib
import os
import sys

# subcommand → (module, one-line help). A module defines `add_arguments(parser)` and `run(args)`, or, for a training
# stage, `make_parser(**kwargs)` (a TrlParser: --config YAML, then --key value overrides) and `main(*parsed)`.
COMMANDS = {
    "tokenizer": ("openllm.data.tokenizer", "train a tokenizer (byte-level BPE, Unigram or characters)"),
    "pretrain": ("openllm.training.pretrain", "pretrain a model, dense or MoE (--config recipes/pretrain_*.yaml)"),
    "sft": ("openllm.training.sft", "supervised fine-tuning, full or LoRA (--config recipes/sft_*.yaml)"),
    "reward": ("openllm.training.reward", "train a reward model on preference pairs"),
    "dpo": ("openllm.training.dpo", "direct preference optimization on preference pairs"),
    "rlhf": ("openllm.training.rlhf", "RLHF (GRPO) with a reward model and/or reward functions"),
    "chain": ("openllm.training.chain", "every stage in one run, pretraining to serving (recipes/chain/)"),
    "merge": ("openllm.training.merge", "merge a LoRA adapter into its base model"),
    "eval": ("openllm.evaluation.perplexity", "perplexity, bits-per-byte, calibration and samples of a model"),
    "generate": ("openllm.evaluation.generation", "generate text from a model, streaming to the terminal"),
    "calibrate": ("openllm.evaluation.calibration", "fit temperature scaling on held-out text; store it in the model"),
    "serve": ("openllm.serving.cli", "serve a model over the TGI and OpenAI HTTP protocols"),
    "export": ("openllm.export", "export a model to ONNX, Llama/Mixtral format or GGUF"),
    "convert": ("openllm.export.convert", "convert between OpenLLM and Llama/Mixtral checkpoints"),
    "presets": ("openllm.models.presets", "list the model presets and their parameter counts"),
    "viz": ("openllm.viz.cli", "pictures of attention, expert routing and token confidence"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="openllm", description="Build a language model end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 0
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    if hasattr(module, "make_parser"):  # a training stage
        stage_parser = module.make_parser(prog=f"openllm {argv[0]}", description=help_text)
        parsed = stage_parser.parse_args_and_config(argv[1:])
        run = lambda: module.main(*parsed) and None  # noqa: E731  (main returns the trainer or summary)
    else:
        command = argparse.ArgumentParser(prog=f"openllm {argv[0]}", description=help_text)
        module.add_arguments(command)
        args = command.parse_args(argv[1:])
        run = lambda: module.run(args)  # noqa: E731
    try:
        return run() or 0
    except (FileNotFoundError, ValueError, OSError) as error:  # bad input: the message says what to fix
        if os.environ.get("OPENLLM_DEBUG"):
            raise
        print(f"openllm {argv[0]}: error: {error}\n(set OPENLLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
