"""One way to load a model and its tokenizer, for every command.

- **Trust**: a folder's or Hub repo's own Python code runs only with `trust_remote_code=True` (`--trust-remote-code`
  on the command line, `trust_remote_code: true` in a recipe). OpenLLM folders need no such trust where `openllm` is
  installed: their `model_type` resolves to the classes registered here, not to the copy of the code they carry.
  A model that needs its own code gets an error that names the flag.
- **dtype**: "auto" is bfloat16 on a CUDA device that supports it and float32 everywhere else.
- **Device**: "auto" is the first CUDA device when there is one, else the CPU.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

DTYPES = ("auto", "float32", "bfloat16", "float16")
HEADS = ("causal-lm", "sequence-classification", "base")


class RemoteCodeError(ValueError):
    """The model or tokenizer needs code of its own to load, and running it was not allowed."""


MODEL_FILES = ("config.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def check_model_path(model_name_or_path: str, files=MODEL_FILES) -> None:
    """Raise FileNotFoundError with the fix when `model_name_or_path` is meant as a local folder but is not one (it
    has none of `files`)."""
    path = Path(model_name_or_path).expanduser()
    looks_local = path.exists() or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"Model folder {model_name_or_path!r} does not exist. Pass a folder written by "
                                "`save_pretrained` or a Hub model id such as `org/name`.")
    if not any((path / name).is_file() for name in files):
        what = "model" if files == MODEL_FILES else "tokenizer"
        raise FileNotFoundError(f"{model_name_or_path!r} has no {' or '.join(files)}, so it is not a {what} folder. "
                                "Pass a folder written by `save_pretrained` (with its tokenizer) or a Hub model id.")


def resolve_device(device: str | None = "auto") -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str | None = "auto"):
    """The torch dtype for `dtype` (one of DTYPES) on `device`."""
    if dtype in (None, "auto"):
        device = resolve_device(device)
        on_bf16_gpu = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_bf16_gpu else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    return getattr(torch, dtype)


@contextlib.contextmanager
def _refusing_remote_code(name: str, what: str):
    """transformers' refusal to run a repository's code, as an error that names our flag."""
    try:
        yield
    except ValueError as error:
        if isinstance(error, RemoteCodeError) or "trust_remote_code" not in str(error):
            raise
        raise RemoteCodeError(
            f"{name} ships its own Python code for its {what}, and loading it would run that code. Run it only if "
            "you trust its author: pass --trust-remote-code (or `trust_remote_code: true` in a recipe). OpenLLM "
            "models need no such trust where the `openllm-hf` package is installed.") from None


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None):
    check_model_path(name_or_path, TOKENIZER_FILES)
    with _refusing_remote_code(name_or_path, "tokenizer"):
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)


def load_config(name_or_path: str, *, trust_remote_code: bool = False, revision: str | None = None, **overrides):
    check_model_path(name_or_path)
    with _refusing_remote_code(name_or_path, "configuration"):
        return AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                          **overrides)


def load_model(name_or_path: str, *, head: str = "causal-lm", trust_remote_code: bool = False, dtype="auto",
               device: str | None = "auto", revision: str | None = None, **kwargs):
    """A model from a folder or Hub id. `head` picks the Auto class. `device=None` leaves placement to the caller
    (a Trainer, or `device_map` in `kwargs`); otherwise the model is moved there and put in eval mode. `dtype` is
    one of DTYPES or a torch dtype; `kwargs` go to `from_pretrained` (attn_implementation, quantization_config...)."""
    if head not in HEADS:
        raise ValueError(f"Unknown model head {head!r}; choose one of {', '.join(HEADS)}.")
    auto_class = {"causal-lm": transformers.AutoModelForCausalLM, "base": transformers.AutoModel,
                  "sequence-classification": transformers.AutoModelForSequenceClassification}[head]
    check_model_path(name_or_path)
    torch_dtype = dtype if not isinstance(dtype, str) else resolve_dtype(dtype, device)
    try:
        with _refusing_remote_code(name_or_path, "model"):
            model = auto_class.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                               dtype=torch_dtype, **kwargs)
    except OSError as error:
        where = "the folder" if Path(name_or_path).is_dir() else "the Hub (it is not a local folder either)"
        raise OSError(f"Could not load a model from {name_or_path!r} ({where}): {error}") from error
    if device is not None:
        model = model.to(resolve_device(device)).eval()
    return model


def load_causal_lm(name_or_path: str, *, trust_remote_code: bool = False, dtype="auto", device: str | None = "auto",
                   revision: str | None = None):
    """(model, tokenizer) in eval mode on `device`: what every inference command starts from."""
    config = load_config(name_or_path, trust_remote_code=trust_remote_code, revision=revision)  # checked first
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    model = load_model(name_or_path, config=config, trust_remote_code=trust_remote_code, dtype=dtype, device=device,
                       revision=revision)
    return model, tokenizer


def add_loading_arguments(parser, dtype: bool = True) -> None:
    """The same loading flags on every command that reads a model (`dtype=False`: the command fixes its own)."""
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code shipped with the model or tokenizer (needed for architectures that "
                             "neither transformers nor openllm provides); off by default")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default="auto",
                            help="weights dtype (auto: bfloat16 on GPUs that support it, else float32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps... (auto: cuda when available)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub model")
