"""GGUF export for llama.cpp (and Ollama, LM Studio...), written with the `gguf` package.

An OpenLLM model is a Llama (dense) or a Mixtral-style model (MoE) in llama.cpp's terms, so the file uses the
"llama" architecture: dense layers as `ffn_{gate,up,down}`, experts as `ffn_{gate,up,down}_exps` with the router in
`ffn_gate_inp`. The byte-level BPE tokenizer becomes llama.cpp's "gpt2" vocabulary with its merges.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download

from .. import atomic
from ..models.loading import load_causal_lm
from ..models.modeling_openllm import rope_inverse_frequencies
from .convert import check_no_calibration, note_dropped_epistemic_head

DTYPES = ("f32", "f16", "q8_0")

# pre-tokenizer regexes llama.cpp re-implements, by the name it knows them under (`tokenizer.ggml.pre`)
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {GPT2_REGEX: "gpt-2", LLAMA3_REGEX: "llama-bpe"}


def export_gguf(model_path: str | Path, output_file: str | Path, dtype: str = "f16") -> Path:
    """Write the causal LM in `model_path` (folder or Hub id, with its tokenizer) to one GGUF file.

    `dtype`: "f32", "f16" (default) or "q8_0" for the weight matrices; norms and the MoE router stay f32.
    Returns the path of the file written.
    """
    try:
        import gguf  # optional: the gguf extra
    except ImportError as e:
        raise ImportError("GGUF export needs the `gguf` package: pip install 'openllm-hf[gguf]'") from e
    if dtype not in DTYPES:
        raise ValueError(f"Unknown GGUF dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    model, tokenizer = load_causal_lm(str(model_path), dtype="float32", device="cpu")
    config = model.config
    _check_llama_compatible(config)

    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    partial = output_file.parent / f".{output_file.name}{atomic.TMP_MARK}{os.getpid()}"  # renamed when complete
    writer = gguf.GGUFWriter(partial, arch="llama")
    writer.add_name(Path(str(model_path)).name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    _add_hyperparameters(writer, config)
    _add_vocabulary(writer, tokenizer, config.vocab_size, model_path)
    for name, tensor in _llama_tensors(model):
        _add_tensor(writer, name, tensor, dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    atomic.commit_file(partial, output_file)
    return output_file


def _check_llama_compatible(config) -> None:
    if getattr(config, "model_type", None) != "openllm":
        raise ValueError(f"`openllm export gguf` converts OpenLLM models, not {config.model_type!r}. For other "
                         "architectures use llama.cpp's convert_hf_to_gguf.py.")
    check_no_calibration(config, "GGUF (llama.cpp)")
    note_dropped_epistemic_head(config, "GGUF (llama.cpp)")
    reasons = config.llama_incompatibilities()
    if reasons:
        raise ValueError(f"llama.cpp's llama architecture cannot compute this model's function: {'; '.join(reasons)}. "
                         "It has no GGUF form; serve it with `openllm serve` or train with these options off.")
    if config.num_experts:
        moe_layers = [config.is_moe_layer(i) for i in range(config.num_hidden_layers)]
        if not all(moe_layers):
            raise ValueError(
                "llama.cpp's llama architecture makes either every layer or no layer Mixture-of-Experts; this model "
                f"mixes dense and MoE layers (decoder_sparse_step={config.decoder_sparse_step}, "
                f"mlp_only_layers={config.mlp_only_layers}), so it has no GGUF form."
            )
        if not config.norm_topk_prob:
            raise ValueError("llama.cpp's llama architecture renormalises the top-k routing weights; this model was "
                             "trained with norm_topk_prob=False, so llama.cpp would compute a different function.")


def _add_hyperparameters(writer, config) -> None:
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.moe_intermediate_size if config.num_experts else config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if config.num_experts:
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
    if config.rope_parameters.get("rope_type", "default") != "default":
        # llama.cpp divides each rotary frequency by its entry in `rope_freqs`: one tensor covers linear and llama3
        unscaled = copy.deepcopy(config)
        unscaled.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
        factors = rope_inverse_frequencies(unscaled) / rope_inverse_frequencies(config)
        writer.add_tensor("rope_freqs.weight", factors.to(torch.float32).numpy())


def _add_vocabulary(writer, tokenizer, vocab_size: int, model_path) -> None:
    import gguf  # optional: the gguf extra

    state = json.loads(tokenizer.backend_tokenizer.to_str()) if tokenizer.is_fast else None
    if state is None or state["model"]["type"] != "BPE":
        raise ValueError("GGUF export supports byte-level BPE tokenizers (what `openllm tokenizer` trains by "
                         f"default); this one is {type(tokenizer).__name__} / "
                         f"{state['model']['type'] if state else 'slow'}.")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(state))

    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ValueError(f"The tokenizer has {len(vocab)} tokens but the model's vocab_size is {vocab_size}.")
    by_id = {i: token for token, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may be padded past the tokenizer (e.g. to a multiple of 64)
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            special = added.get(token)
            types.append(gguf.TokenType.NORMAL if special is None else
                         gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    folder = Path(model_path)
    if not folder.is_dir():
        folder = Path(snapshot_download(str(model_path), allow_patterns=["*.json", "*.jinja", "merges.txt"]))
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # SpecialVocab takes add-BOS/EOS from tokenizer_config.json flags, which a fast tokenizer ignores, and writes
    # nothing without them (llama.cpp then adds BOS for "llama-bpe"): what the tokenizer does decides instead, so
    # llama.cpp's `add_special=True` encodes the same ids
    plain, with_special = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    special.add_special_token.update(bos=bos is not None and with_special[:1] == [bos] and plain[:1] != [bos],
                                     eos=eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos])
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer_name(state: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization, or a ValueError saying why there is none."""
    pre, normalizer = state.get("pre_tokenizer") or {}, state.get("normalizer")
    if normalizer:
        raise ValueError(f"The tokenizer normalises text ({normalizer.get('type')}); llama.cpp's BPE vocabularies "
                         "do not, so llama.cpp would tokenize differently.")
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regex, byte_level = None, None
    for step in steps:
        if step.get("type") == "ByteLevel":
            byte_level = step
            if step.get("use_regex", True):
                regex = GPT2_REGEX if regex is None else "several"
        elif step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            regex = step["pattern"]["Regex"] if regex is None else "several"
        else:
            regex = "unsupported"
    if byte_level is None or byte_level.get("add_prefix_space", False) or regex not in PRE_TOKENIZERS:
        raise ValueError(
            "GGUF export needs a byte-level BPE tokenizer that splits words with the GPT-2 or Llama-3 regex and adds "
            f"no prefix space (what llama.cpp calls 'gpt-2' and 'llama-bpe'); this one's pre-tokenizer is {pre}."
        )
    return PRE_TOKENIZERS[regex]


def _rotary_permute(weight, num_heads: int):
    """Reorder q/k projection rows from rotate-half pairs (i, i + d/2) to llama.cpp's adjacent pairs (2i, 2i + 1)."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return weight.reshape(num_heads, 2, head_dim // 2, in_features).transpose(1, 2).reshape(out_features, in_features)


def _llama_tensors(model):
    """(GGUF name, float32 tensor) for every weight, in llama.cpp's layout and naming."""
    import gguf  # optional: the gguf extra

    names, tensor = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    config, base = model.config, model.model
    yield names[tensor.TOKEN_EMBD] + ".weight", base.embed_tokens.weight
    yield names[tensor.OUTPUT_NORM] + ".weight", base.norm.weight
    if not config.tie_word_embeddings:  # llama.cpp reuses token_embd when `output` is absent
        yield names[tensor.OUTPUT] + ".weight", model.lm_head.weight
    for i, layer in enumerate(base.layers):
        def name(kind, bid=i):
            return names[kind].format(bid=bid) + ".weight"

        attn = layer.self_attn
        yield name(tensor.ATTN_NORM), layer.input_layernorm.weight
        yield name(tensor.ATTN_Q), _rotary_permute(attn.q_proj.weight, config.num_attention_heads)
        yield name(tensor.ATTN_K), _rotary_permute(attn.k_proj.weight, config.num_key_value_heads)
        yield name(tensor.ATTN_V), attn.v_proj.weight
        yield name(tensor.ATTN_OUT), attn.o_proj.weight
        yield name(tensor.FFN_NORM), layer.post_attention_layernorm.weight
        if layer.is_moe:
            experts = layer.mlp.experts
            gate, up = experts.gate_up_proj.chunk(2, dim=1)  # (E, I, H) each
            yield name(tensor.FFN_GATE_INP), layer.mlp.gate.weight
            yield name(tensor.FFN_GATE_EXP), gate
            yield name(tensor.FFN_UP_EXP), up
            yield name(tensor.FFN_DOWN_EXP), experts.down_proj
        else:
            yield name(tensor.FFN_GATE), layer.mlp.gate_proj.weight
            yield name(tensor.FFN_UP), layer.mlp.up_proj.weight
            yield name(tensor.FFN_DOWN), layer.mlp.down_proj.weight


def _add_tensor(writer, name: str, tensor, dtype: str) -> None:
    import gguf  # optional: the gguf extra

    data = tensor.detach().to("cpu").float().contiguous().numpy()
    # vectors (norms) and the router are small and precision-sensitive: llama.cpp's converter keeps them f32 too
    keep_f32 = dtype == "f32" or data.ndim == 1 or ".ffn_gate_inp." in name
    if keep_f32:
        writer.add_tensor(name, data)
    elif dtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, or q8_0 rows that are not whole 32-value blocks
        writer.add_tensor(name, data.astype(np.float16))
