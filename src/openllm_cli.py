"""`openllm` command line: one subcommand per module, imported only when used.

This module stands outside the `openllm` package on purpose: `import openllm` registers the model classes with
transformers' Auto classes, which loads torch and transformers (seconds), and `openllm --help` should not wait for
that.

Commands come in the order of the chain. The training stages (pretrain, sft, reward, dpo, rlhf) run the same
`make_parser()` and `main()` as `recipes/<stage>.py`, so `openllm sft --config recipes/sft_debug.yaml --key value` and
`accelerate launch -m openllm sft --config ...` do exactly what the recipe script does. `--config` also takes the name
of a recipe shipped with the package (`openllm pretrain --config pretrain_quickstart.yaml`), from any folder.
"""

import argparse
import importlib
import os
import sys

# subcommand → (module, one-line help, the extra that provides its optional dependencies). A module defines
# `add_arguments(parser)` and `run(args)`, or, for a training stage, `make_parser(**kwargs)` (a TrlParser: --config
# YAML, then --key value overrides) and `main(*parsed)`.
COMMANDS = {
    "tokenizer": ("openllm.data.tokenizer", "train a tokenizer (byte-level BPE, Unigram or characters)", None),
    "prepare": ("openllm.data.prepare", "tokenize a corpus once into token shards that training memory-maps", None),
    "tasks": ("openllm.evaluation.checkable", "the checkable tasks: list them, write them as JSONL, score a model",
              None),
    "pretrain": ("openllm.training.pretrain",
                 "pretrain a model, dense or MoE (--config pretrain_quickstart.yaml, or a YAML of yours)", "train"),
    "sft": ("openllm.training.sft", "supervised fine-tuning, full or LoRA (--config sft_debug.yaml, or yours)",
            "train"),
    "reward": ("openllm.training.reward", "train a reward model on preference pairs", "train"),
    "dpo": ("openllm.training.dpo", "direct preference optimization on preference pairs", "train"),
    "rlhf": ("openllm.training.rlhf", "RLHF (GRPO) with a reward model and/or reward functions", "train"),
    "chain": ("openllm.chain", "every stage in one run, pretraining to serving (recipes/chain/)", "train,serve"),
    "merge": ("openllm.training.merge", "merge a LoRA adapter into its base model", "train"),
    "eval": ("openllm.evaluation.evaluate", "perplexity, bits-per-byte, calibration and samples of a model", None),
    "generate": ("openllm.evaluation.generation", "generate text from a model, streaming to the terminal", None),
    "calibrate": ("openllm.evaluation.calibration",
                  "choose temperature, Platt or beta scaling on held-out text; store it in the model", None),
    "epistemic-head": ("openllm.evaluation.epistemic",
                       "add an epistemic head to a trained model (frozen): uncertainty split in one forward pass",
                       None),
    "serve": ("openllm.serving.cli", "serve a model over the OpenAI and TGI HTTP protocols", "serve"),
    "export": ("openllm.export", "export a model to ONNX, Llama/Mixtral format or GGUF", None),
    "convert": ("openllm.export.convert", "convert between OpenLLM and Llama/Mixtral checkpoints", None),
    "presets": ("openllm.models.presets", "list the model presets and their parameter counts", None),
    "viz": ("openllm.viz.cli", "pictures of attention, expert routing and token confidence", "train"),
}

# an optional module → the extra that installs it (module names that differ from their distribution's)
EXTRAS = {"trl": "train", "peft": "train", "matplotlib": "train", "tensorboard": "train", "fastapi": "serve",
          "uvicorn": "serve", "prometheus_client": "serve", "optimum": "onnx", "onnxruntime": "onnx", "gguf": "gguf",
          "lm_eval": "eval", "llama_cpp": "llamacpp", "nbclient": "notebooks", "nbformat": "notebooks"}


def missing_extra_message(command: str, error: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install, when `error` is a missing optional dependency (None otherwise)."""
    module = (error.name or "").split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    everything = COMMANDS[command][2] or extra
    return (f"openllm {command}: needs {module}, which is not installed: pip install 'openllm-hf[{extra}]'"
            + (f" (or 'openllm-hf[{everything}]' for everything this command can do)" if everything != extra else ""))


def _resolve_config(argv: list[str]) -> list[str]:
    """`--config NAME` → the shipped recipe NAME when no such file exists here."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            from openllm.resources import resolve_recipe

            argv[i + 1] = resolve_recipe(argv[i + 1])
        elif arg.startswith("--config="):
            from openllm.resources import resolve_recipe

            argv[i] = "--config=" + resolve_recipe(arg.split("=", 1)[1])
    return argv


def _command(name: str, argv: list[str]):
    """Import the command's module and parse its arguments; returns a function that runs it."""
    module_name, help_text, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    if hasattr(module, "make_parser"):  # a training stage
        stage_parser = module.make_parser(prog=f"openllm {name}", description=help_text)
        parsed = stage_parser.parse_args_and_config(_resolve_config(argv))
        return lambda: module.main(*parsed) and None  # main returns the trainer or summary
    command = argparse.ArgumentParser(prog=f"openllm {name}", description=help_text)
    module.add_arguments(command)
    args = command.parse_args(argv)
    return lambda: module.run(args)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="openllm", description="Build a language model end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, _) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 0
    name = argv[0]
    try:
        return _command(name, argv[1:])() or 0
    except ModuleNotFoundError as error:
        message = missing_extra_message(name, error)
        if message is None or os.environ.get("OPENLLM_DEBUG"):
            raise
        print(message, file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as error:  # bad input: the message says what to fix
        if os.environ.get("OPENLLM_DEBUG"):
            raise
        print(f"openllm {name}: error: {error}\n(set OPENLLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
