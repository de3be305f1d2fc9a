"""`openllm` command line: one subcommand per module, imported only when used so `openllm --help` stays fast."""

import argparse
import importlib
import os
import sys

# subcommand → (module that defines `add_arguments(parser)` and `run(args)`, one-line help)
COMMANDS = {
    "tokenizer": ("openllm.data.tokenizer", "train a tokenizer (byte-level BPE, Unigram or characters)"),
    "eval": ("openllm.evaluation.perplexity", "perplexity, bits-per-byte, calibration and samples of a model"),
    "generate": ("openllm.evaluation.generation", "generate text from a model, streaming to the terminal"),
    "calibrate": ("openllm.evaluation.calibration", "fit temperature scaling on held-out text; store it in the model"),
    "serve": ("openllm.serving.cli", "serve a model over the TGI and OpenAI HTTP protocols"),
    "export": ("openllm.export", "export a model to ONNX, Llama/Mixtral format or GGUF"),
    "convert": ("openllm.export.convert", "convert between OpenLLM and Llama/Mixtral checkpoints"),
    "merge": ("openllm.training.merge", "merge a LoRA adapter into its base model"),
    "presets": ("openllm.models.presets", "list the model presets and their parameter counts"),
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
    command = argparse.ArgumentParser(prog=f"openllm {argv[0]}", description=help_text)
    module.add_arguments(command)
    args = command.parse_args(argv[1:])
    try:
        return module.run(args) or 0
    except (FileNotFoundError, ValueError, OSError) as error:  # bad input: the message says what to fix
        if os.environ.get("OPENLLM_DEBUG"):
            raise
        print(f"openllm {argv[0]}: error: {error}\n(set OPENLLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
