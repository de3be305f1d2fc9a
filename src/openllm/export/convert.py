"""Lossless conversion between OpenLLM checkpoints and transformers' Llama (dense) and Mixtral (MoE) classes.

OpenLLM already uses Llama's and Mixtral's parameter names and layouts, so a conversion is a config translation plus
a key rename for Mixtral's experts, which transformers 5.x stores fused (`experts.gate_up_proj`, `experts.down_proj`)
and 4.57 as one module per expert (`block_sparse_moe.experts.{e}.w1/w2/w3`). Logits match to float precision.

    openllm convert runs/small runs/small-llama --to llama
    openllm convert runs/small-llama runs/small-again --to openllm
"""

import copy
import json
import logging
import shutil
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from .. import atomic
from ..hub.paths import check_output_folder
from ..models import OpenLLMConfig, OpenLLMForCausalLM
from ..models.configuration_openllm import ROPE_TYPES
from ..models.loading import load_config, load_model

logger = logging.getLogger(__name__)

TARGETS = ("llama", "mixtral", "openllm")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
# fields that map one to one between OpenLLM and Llama/Mixtral configs
_SHARED_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_act",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache", "attention_dropout",
    "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id",
)


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------


def _check_expressible(config, target: str) -> None:
    reasons = config.llama_incompatibilities()
    if reasons:
        raise ValueError(f"This model cannot be converted to {target} without changing its outputs: "
                         f"{'; '.join(reasons)}. Keep it as an OpenLLM checkpoint (it loads anywhere with "
                         "`trust_remote_code=True`), or train with these options off to get a convertible model.")


def _rope_kwargs(config) -> dict:
    """`rope_theta=` and `rope_scaling=` kwargs, which Llama/Mixtral configs accept on transformers 4.57 and 5.x."""
    rope = {k: v for k, v in config.rope_parameters.items() if k != "rope_theta"}
    if rope["rope_type"] == "llama3":  # transformers validates that all four are present
        rope.setdefault("low_freq_factor", 1.0)
        rope.setdefault("high_freq_factor", 4.0)
        rope.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    return {"rope_theta": config.rope_theta, "rope_scaling": None if rope["rope_type"] == "default" else rope}


def _read_rope(config) -> tuple[float, dict]:
    """(rope_theta, rope_parameters) of a Llama/Mixtral config: 5.x keeps both in `rope_parameters`, 4.57 has
    `rope_theta` and `rope_scaling`."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = rope.pop("rope_theta", None) or getattr(config, "rope_theta", None) or 10000.0
    rope_type = rope.pop("type", None) or rope.get("rope_type", "default")
    rope["rope_type"] = rope_type
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"RoPE scaling {rope_type!r} has no OpenLLM equivalent (supported: {', '.join(ROPE_TYPES)}); "
                         "the converted model would compute different logits.")
    return float(theta), rope


def check_no_calibration(config, target: str) -> None:
    """Refuse a calibrated model: `target` has no field for its calibration, so it would be silently lost."""
    temperature = getattr(config, "logits_temperature", 1.0)
    lost = f"and {target} has no such field, so the exported model would lose its calibration"
    if getattr(config, "beta_calibration", None) is not None:
        raise ValueError(f"This model is calibrated: beta calibration (beta_calibration={config.beta_calibration}, "
                         f"set by `openllm calibrate`) rescales its top-1 probability, {lost}. Export a copy without "
                         "beta_calibration in its config.json, or calibrate with `--methods temperature` first.")
    if getattr(config, "logits_bias", None) is not None:
        raise ValueError(f"This model is calibrated: Platt scaling (set by `openllm calibrate`) divides its logits by "
                         f"logits_temperature={temperature:g} and adds a per-token logits_bias, {lost}. Export a copy "
                         "without both in its config.json; an engine that adds a per-token logit bias before its "
                         f"temperature reproduces it with logit_bias = {temperature:g} × logits_bias, sampled at "
                         f"temperature {temperature:g} × your usual temperature.")
    if temperature != 1.0:
        raise ValueError(f"This model is calibrated: its logits are divided by logits_temperature={temperature:g} "
                         f"(set by `openllm calibrate`), {lost}. Set logits_temperature to 1.0 in a copy's "
                         f"config.json, export that, and sample it at temperature {temperature:g} × your usual "
                         "temperature.")


def note_dropped_epistemic_head(config, target: str) -> None:
    """Say so when `target` leaves out the model's epistemic head (it only reads the logits, so they stay the same)."""
    if getattr(config, "epistemic_head", None):
        logger.warning(f"{target} has no place for this model's epistemic head, so it is left out: the logits are "
                       "the same, but the split of uncertainty into aleatoric and epistemic parts stays with the "
                       "OpenLLM checkpoint.")


def llama_config(config):
    """`LlamaConfig` equivalent to a dense `OpenLLMConfig`."""
    check_no_calibration(config, "Llama")
    note_dropped_epistemic_head(config, "Llama")
    if config.num_experts:
        raise ValueError(f"This is a Mixture-of-Experts model ({config.num_experts} experts); Llama is dense. "
                         "Convert it with `--to mixtral` instead.")
    _check_expressible(config, "Llama")
    return LlamaConfig(
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
        intermediate_size=config.intermediate_size, head_dim=config.head_dim, attention_bias=False, mlp_bias=False,
        **_rope_kwargs(config),
    )


def mixtral_config(config):
    """`MixtralConfig` equivalent to an MoE `OpenLLMConfig` whose every layer is an MoE layer."""
    check_no_calibration(config, "Mixtral")
    note_dropped_epistemic_head(config, "Mixtral")
    if not config.num_experts:
        raise ValueError("This is a dense model (num_experts=0); Mixtral is a Mixture-of-Experts architecture. "
                         "Convert it with `--to llama` instead.")
    dense = [i for i in range(config.num_hidden_layers) if not config.is_moe_layer(i)]
    if dense:
        raise ValueError(
            f"Layers {dense} of this model are dense (mlp_only_layers={config.mlp_only_layers}, "
            f"decoder_sparse_step={config.decoder_sparse_step}), but Mixtral makes every layer an MoE layer, so "
            "this hybrid has no Mixtral equivalent. Keep it as an OpenLLM checkpoint (it loads anywhere with "
            "`trust_remote_code=True`), or train with mlp_only_layers=[] and decoder_sparse_step=1 to get a "
            "Mixtral-convertible model."
        )
    if not config.norm_topk_prob:
        raise ValueError("This model routes with norm_topk_prob=False (top-k weights not renormalised), but Mixtral "
                         "always renormalises them, so its outputs would differ. Keep it as an OpenLLM checkpoint.")
    _check_expressible(config, "Mixtral")
    return MixtralConfig(
        **{name: getattr(config, name) for name in _SHARED_FIELDS},
        intermediate_size=config.moe_intermediate_size, head_dim=config.head_dim,
        num_local_experts=config.num_experts, num_experts_per_tok=config.num_experts_per_tok,
        router_aux_loss_coef=config.router_aux_loss_coef, output_router_logits=config.output_router_logits,
        router_jitter_noise=0.0, sliding_window=None, **_rope_kwargs(config),
    )


def openllm_config(config):
    """`OpenLLMConfig` equivalent to a `LlamaConfig` or `MixtralConfig`."""
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("This Llama model has bias terms (attention_bias/mlp_bias); OpenLLM layers have none.")
    if getattr(config, "sliding_window", None) is not None:
        raise ValueError(f"This model uses sliding-window attention (sliding_window={config.sliding_window}); "
                         "OpenLLM attends to the full context. Set `sliding_window` to null in its config.json if "
                         "it never sees sequences longer than the window.")
    theta, rope = _read_rope(config)
    kwargs = {name: getattr(config, name) for name in _SHARED_FIELDS}
    kwargs.update(
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        rope_theta=theta, rope_parameters=rope,
    )
    if config.model_type == "mixtral":
        # Mixtral trains with the load-balancing loss only, hence no z-loss
        kwargs.update(
            intermediate_size=config.intermediate_size, moe_intermediate_size=config.intermediate_size,
            num_experts=config.num_local_experts, num_experts_per_tok=config.num_experts_per_tok,
            norm_topk_prob=True, router_aux_loss_coef=config.router_aux_loss_coef, router_z_loss_coef=0.0,
            output_router_logits=config.output_router_logits,
        )
    else:
        kwargs.update(intermediate_size=config.intermediate_size)
    return OpenLLMConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------------


def _build(model_class, config, source):
    """An empty `model_class` in the source's dtype, attention implementation and mode, with its generation config."""
    model = model_class._from_config(config, dtype=source.dtype,
                                     attn_implementation=source.config._attn_implementation)
    model.generation_config = copy.deepcopy(source.generation_config)
    return model.train(source.training)


def _load(model, state_dict):
    model.load_state_dict(state_dict, strict=True)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


def _per_expert_layout(state_dict) -> bool:
    """Whether Mixtral stores one `w1/w2/w3` module per expert (transformers 4.57), not fused 3-D weights (5.x)."""
    return any(".block_sparse_moe." in key for key in state_dict)


def _unfuse_experts(state_dict) -> dict:
    """Fused `mlp.experts.gate_up_proj (E, 2I, H)` / `down_proj (E, H, I)` → `block_sparse_moe.experts.{e}.w1/w3/w2`
    (gate, up, down), and `mlp.gate` → `block_sparse_moe.gate`."""
    out = {}
    for key, value in state_dict.items():
        layer, sep, name = key.partition(".mlp.")
        if sep and name == "gate.weight":
            out[f"{layer}.block_sparse_moe.gate.weight"] = value
        elif sep and name == "experts.gate_up_proj":
            for e, expert in enumerate(value):
                gate, up = expert.chunk(2, dim=0)
                out[f"{layer}.block_sparse_moe.experts.{e}.w1.weight"] = gate
                out[f"{layer}.block_sparse_moe.experts.{e}.w3.weight"] = up
        elif sep and name == "experts.down_proj":
            for e, down in enumerate(value):
                out[f"{layer}.block_sparse_moe.experts.{e}.w2.weight"] = down
        else:
            out[key] = value
    return out


def _fuse_experts(state_dict, num_experts: int) -> dict:
    """The inverse of `_unfuse_experts`."""
    out = {}
    for key, value in state_dict.items():
        layer, sep, name = key.partition(".block_sparse_moe.")
        if not sep:
            out[key] = value
        elif name == "gate.weight":
            out[f"{layer}.mlp.gate.weight"] = value
            w = [[state_dict[f"{layer}.block_sparse_moe.experts.{e}.w{i}.weight"] for e in range(num_experts)]
                 for i in (1, 2, 3)]
            out[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat(gu) for gu in zip(w[0], w[2])])
            out[f"{layer}.mlp.experts.down_proj"] = torch.stack(w[1])
    return out


def _decoder_weights(model) -> dict:
    """The state dict without the epistemic head, which Llama and Mixtral have no place for."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("epistemic_head.")}


def to_llama(model):
    """`LlamaForCausalLM` with the weights of a dense `OpenLLMForCausalLM`."""
    return _load(_build(LlamaForCausalLM, llama_config(model.config), model), _decoder_weights(model))


def from_llama(model):
    """`OpenLLMForCausalLM` with the weights of a `LlamaForCausalLM`."""
    return _load(_build(OpenLLMForCausalLM, openllm_config(model.config), model), model.state_dict())


def to_mixtral(model):
    """`MixtralForCausalLM` with the weights of an MoE `OpenLLMForCausalLM` (every layer MoE, renormalised top-k)."""
    target = _build(MixtralForCausalLM, mixtral_config(model.config), model)
    state_dict = _decoder_weights(model)
    if _per_expert_layout(target.state_dict()):
        state_dict = _unfuse_experts(state_dict)
    return _load(target, state_dict)


def from_mixtral(model):
    """`OpenLLMForCausalLM` with the weights of a `MixtralForCausalLM` (either expert layout)."""
    target = _build(OpenLLMForCausalLM, openllm_config(model.config), model)
    state_dict = model.state_dict()
    if _per_expert_layout(state_dict):
        state_dict = _fuse_experts(state_dict, model.config.num_local_experts)
    return _load(target, state_dict)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint folders
# ---------------------------------------------------------------------------------------------------------------------


def max_logit_difference(a, b, seq_len: int = 32) -> float:
    """Largest |logit| difference between two models on one random sequence."""
    seq_len = min(seq_len, a.config.max_position_embeddings)
    input_ids = torch.randint(0, a.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la = a(input_ids.to(a.device)).logits.float()
        lb = b(input_ids.to(b.device)).logits.float()
    return (la - lb.to(la.device)).abs().max().item()


def _portable_config(folder: Path) -> None:
    """transformers 5.x writes RoPE settings only as `rope_parameters`; add 4.57's `rope_theta`/`rope_scaling` so the
    checkpoint loads with the right frequencies there too (5.x reads `rope_parameters` first)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.get("rope_parameters")
    if not rope or "rope_theta" in config:
        return
    config["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def convert_checkpoint(src, dst, to: str, verify: bool = True):
    """Convert the model folder `src` into a `to` ("llama", "mixtral" or "openllm") folder `dst`: weights in their
    stored dtype, the target's config and generation config, and the tokenizer files. With `verify`, runs both
    models on a random sequence and raises if their logits differ; returns the largest difference (None without)."""
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ValueError(f"Unknown target {to!r}; choose one of {', '.join(TARGETS)}.")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a model folder (no config.json); pass a `save_pretrained` folder.")
    if dst.resolve() == src.resolve():
        raise ValueError("The destination must differ from the source folder.")
    config = load_config(str(src))
    model_type = config.model_type
    sources = {"llama": ("openllm",), "mixtral": ("openllm",), "openllm": ("llama", "mixtral")}[to]
    if model_type not in sources:
        raise ValueError(f"{src} holds a {model_type!r} model, but `--to {to}` converts from "
                         f"{' or '.join(repr(s) for s in sources)} models.")

    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    model = load_model(str(src), dtype=getattr(torch, str(stored).removeprefix("torch.")), device="cpu")
    if to == "openllm":
        converted = from_llama(model) if model_type == "llama" else from_mixtral(model)
    else:
        converted = to_llama(model) if to == "llama" else to_mixtral(model)
    difference = None
    if verify:
        difference = max_logit_difference(model, converted)
        tolerance = 1e-4 if model.dtype == torch.float32 else 5e-2
        if difference > tolerance:
            raise RuntimeError(f"The converted model's logits differ from the source's by {difference:.3g} (more "
                               f"than {tolerance:g}); nothing was written.")
    check_output_folder(dst)
    with atomic.folder(dst) as folder:  # the converted folder appears whole or not at all
        converted.save_pretrained(folder)
        _portable_config(folder)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, folder / name)
    return difference


def add_arguments(parser):
    parser.add_argument("src", help="model folder to convert (a `save_pretrained` folder)")
    parser.add_argument("dst", help="folder to write the converted model and tokenizer to")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="llama: dense OpenLLM → LlamaForCausalLM; mixtral: MoE OpenLLM → MixtralForCausalLM; "
                             "openllm: Llama or Mixtral → OpenLLM")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip comparing the two models' logits on a random sequence")


def run(args):
    difference = convert_checkpoint(args.src, args.dst, to=args.to, verify=args.verify)
    checked = "" if difference is None else f" (largest logit difference from the source: {difference:.2g})"
    print(f"Wrote the {args.to} checkpoint to {args.dst}{checked}")
