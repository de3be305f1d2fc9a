"""ONNX export with optimum: a decoder with KV cache that `optimum.onnxruntime.ORTModelForCausalLM` runs.

optimum-onnx supports only transformers<4.58, so this module runs in the compat environment (`make install-compat`).
Everything optimum-specific is imported inside functions: importing `openllm.export.onnx` never fails.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import types
from pathlib import Path

import torch
import transformers
from huggingface_hub import snapshot_download

from .. import atomic, models
from ..hub.paths import check_output_folder
from ..models.loading import RemoteCodeError, check_model_path, load_config
from .convert import note_dropped_epistemic_head

ONNX_FILE = "model.onnx"
QUANTIZED_ONNX_FILE = "model_quantized.onnx"
# the newest transformers that optimum-onnx 0.1 exports with; it pins `transformers<4.58`
MAX_TRANSFORMERS = (4, 58)
INSTALL_HINT = (
    "The ONNX exporter (optimum-onnx) needs transformers<4.58 and lives in a second environment. Create it with "
    "`make install-compat` (or `pip install 'openllm-hf[onnx]' 'transformers==4.57.6'` in a fresh virtualenv), then "
    "run `.venv-compat/bin/openllm export onnx MODEL OUT`."
)


def check_onnx_environment(transformers_version: str | None = None) -> None:
    """Raise `RuntimeError` saying how to install the export environment when this one cannot export to ONNX.

    `transformers_version` defaults to the installed version; pass another to check it.
    """
    if transformers_version is None:
        transformers_version = transformers.__version__
    major_minor = tuple(int(part) for part in transformers_version.split(".")[:2])
    if major_minor >= MAX_TRANSFORMERS:
        raise RuntimeError(f"transformers {transformers_version} is installed. {INSTALL_HINT}")
    missing = [name for name in ("optimum.exporters.onnx", "onnxruntime") if not _importable(name)]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} cannot be imported. {INSTALL_HINT}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# ---------------------------------------------------------------------------------------------------------------------
# optimum glue: an OnnxConfig for the `openllm` model type and a patcher that makes MoE layers traceable
# ---------------------------------------------------------------------------------------------------------------------


def _moe_block_forward(self, hidden_states):
    """The MoE block's forward without data-dependent control flow, for tracing.

    Eager mode loops only over the experts some token picked (a Python list the tracer would freeze) and counts
    tokens per expert with `bincount`; here every expert runs on the tokens routed to it, which may be none.
    """
    batch, seq, hidden = hidden_states.shape
    flat = hidden_states.reshape(-1, hidden)
    router_logits, top_k_weights, top_k_index = self.gate(flat)
    experts = self.experts
    out = torch.zeros_like(flat)
    for e in range(experts.num_experts):
        token, slot = torch.where(top_k_index == e)
        gate, up = torch.nn.functional.linear(flat[token], experts.gate_up_proj[e]).chunk(2, dim=-1)
        y = torch.nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[e])
        out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
    return out.reshape(batch, seq, hidden), router_logits


def _onnx_config_class():
    # optional: the onnx extra
    from optimum.exporters.onnx.config import TextDecoderWithPositionIdsOnnxConfig
    from optimum.exporters.onnx.model_patcher import ModelPatcher
    from optimum.utils import DummyTextInputGenerator, MistralDummyPastKeyValuesGenerator, NormalizedTextConfigWithGQA

    class OpenLLMModelPatcher(ModelPatcher):
        def __enter__(self):
            super().__enter__()
            self._moe_blocks = [m for m in self._model.modules() if hasattr(m, "gate") and hasattr(m, "experts")]
            for block in self._moe_blocks:
                block.forward = types.MethodType(_moe_block_forward, block)

        def __exit__(self, exc_type, exc_value, traceback):
            super().__exit__(exc_type, exc_value, traceback)
            for block in self._moe_blocks:
                del block.forward  # back to the class's forward

    class OpenLLMOnnxConfig(TextDecoderWithPositionIdsOnnxConfig):
        """Llama's ONNX inputs and outputs, with grouped-query attention read from `num_key_value_heads`."""

        DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, MistralDummyPastKeyValuesGenerator)
        DUMMY_PKV_GENERATOR_CLASS = MistralDummyPastKeyValuesGenerator
        NORMALIZED_CONFIG_CLASS = NormalizedTextConfigWithGQA
        _MODEL_PATCHER = OpenLLMModelPatcher

    return OpenLLMOnnxConfig


def onnx_model_class():
    """`ORTModelForCausalLM` that sizes the empty first-step cache from `num_key_value_heads` and `head_dim`.

    optimum reads those two only for model types it knows and otherwise assumes one KV head per query head.
    """
    from optimum.onnxruntime import ORTModelForCausalLM  # optional: the onnx extra

    class OpenLLMORTModelForCausalLM(ORTModelForCausalLM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_key_value_heads = self.config.num_key_value_heads
            self.embed_size_per_head = getattr(self.config, "head_dim", None) or (
                self.config.hidden_size // self.config.num_attention_heads
            )

    return OpenLLMORTModelForCausalLM


def load_onnx_model(path: str | Path, quantized: bool = False, **kwargs):
    """An exported folder, ready for `generate`; `quantized=True` loads `model_quantized.onnx`."""
    check_onnx_environment()
    file_name = QUANTIZED_ONNX_FILE if quantized else ONNX_FILE
    if not (Path(path) / file_name).is_file():
        hint = " Export with `--quantize int8` to get it." if quantized else ""
        raise FileNotFoundError(f"No {file_name} in {path}.{hint}")
    return onnx_model_class().from_pretrained(path, file_name=file_name, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Export and quantization
# ---------------------------------------------------------------------------------------------------------------------


def export_onnx(
    model_path: str | Path,
    output_dir: str | Path,
    quantize: str | None = None,
    opset: int | None = None,
    validate: bool = True,
    trust_remote_code: bool = False,
) -> Path:
    """Export a causal LM folder (or Hub id) to `output_dir/model.onnx` with KV-cache inputs and outputs.

    optimum traces the graph from the modeling file the checkpoint carries. That file must be the installed
    openllm's own, unless `trust_remote_code` allows other code to run. optimum checks the ONNX outputs against
    PyTorch's (`validate`). `quantize="int8"` also writes
    `model_quantized.onnx` (dynamic int8 weights and activations, onnxruntime's quantizer).
    Returns `output_dir`.
    """
    check_onnx_environment()
    if quantize not in (None, "int8"):
        raise ValueError(f"Unknown quantization {quantize!r}: the ONNX export supports only 'int8'.")
    from optimum.exporters.onnx import main_export  # optional: the onnx extra

    check_model_path(str(model_path))
    config = load_config(str(model_path), trust_remote_code=trust_remote_code)
    if config.model_type != "openllm":
        raise ValueError(
            f"{model_path} holds a {config.model_type!r} model; `openllm export onnx` exports OpenLLM models. "
            f"For a model type optimum supports natively, run `optimum-cli export onnx --model {model_path} OUT`."
        )
    if "AutoModelForCausalLM" not in (getattr(config, "auto_map", None) or {}):
        # optimum tells the library from the class's module: it must come from transformers' remote-code loader
        raise ValueError(f"{model_path} has no modeling code (`auto_map` in config.json). Load it with openllm "
                         "installed and `save_pretrained` it again, which writes the code next to the weights.")
    note_dropped_epistemic_head(config, "The ONNX graph")
    # optimum runs the checkpoint's own code: allowed when it is openllm's, or when the user trusts it
    runs_trusted_code = trust_remote_code or check_own_code(model_path)
    output_dir = Path(output_dir)
    onnx_config = _onnx_config_class()(config, task="text-generation", use_past=True, use_past_in_inputs=True)
    check_output_folder(output_dir)
    with atomic.folder(output_dir) as folder:  # the exported folder appears whole or not at all
        main_export(
            str(model_path),
            output=folder,
            task="text-generation-with-past",
            opset=opset,
            trust_remote_code=runs_trusted_code,
            library_name="transformers",
            custom_onnx_configs={"model": onnx_config},
            do_validation=validate,
            no_post_process=True,
        )
        _copy_model_code(model_path, folder)
        if quantize == "int8":
            quantize_onnx(folder)
    return output_dir


def _code_folder(model_path) -> Path:
    source = Path(model_path)
    if source.is_dir():
        return source
    return Path(snapshot_download(str(model_path), allow_patterns=["*.py"]))


def check_own_code(model_path) -> bool:
    """True when every Python file the checkpoint carries is the installed openllm's own; RemoteCodeError
    otherwise."""
    ours = Path(models.__file__).parent
    for code in _code_folder(model_path).glob("*.py"):
        if not (ours / code.name).is_file() or (ours / code.name).read_bytes() != code.read_bytes():
            raise RemoteCodeError(
                f"{model_path} carries {code.name}, which is not the installed openllm's own code, and the ONNX "
                "export runs the checkpoint's code. Run it only if you trust its author: pass --trust-remote-code. "
                "Or load the model with this openllm and `save_pretrained` it again, which writes openllm's code.")
    return True


def _copy_model_code(model_path, output_dir: Path) -> None:
    """Put the checkpoint's configuration and modeling files next to the config, whose `auto_map` names them."""
    source = _code_folder(model_path)
    for code in source.glob("*.py"):
        if not (output_dir / code.name).exists():
            shutil.copy(code, output_dir / code.name)


def quantize_onnx(onnx_dir: str | Path) -> Path:
    """Dynamic int8 quantization of `onnx_dir/model.onnx` into `onnx_dir/model_quantized.onnx`."""
    check_onnx_environment()
    # optional: the onnx extra
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        qconfig = AutoQuantizationConfig.arm64(is_static=False, per_channel=True)
    elif _cpu_has("avx512_vnni"):
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    else:  # avx2's u8 x s8 products saturate without the reduced range
        qconfig = AutoQuantizationConfig.avx2(is_static=False, per_channel=True, reduce_range=True)
    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name=ONNX_FILE)
    quantizer.quantize(quantization_config=qconfig, save_dir=onnx_dir)
    return Path(onnx_dir) / QUANTIZED_ONNX_FILE


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
