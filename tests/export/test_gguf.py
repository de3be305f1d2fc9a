import json

import gguf
import pytest
import torch
from tiny_checkpoints import CORPUS, make_checkpoint, make_tokenizer
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from openllm.data.tokenizer import train_tokenizer
from openllm.export import export_gguf
from openllm.export.gguf import LLAMA3_REGEX, _pre_tokenizer_name, _rotary_permute
from openllm_cli import main as cli_main


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def tensors(reader) -> dict:
    return {t.name: t for t in reader.tensors}


def as_torch(t):
    """A reader tensor in PyTorch's (row-major, outermost first) shape, dequantized to float32."""
    data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type not in (0, 1) else t.data
    return torch.from_numpy(data.astype("float32").reshape(list(reversed(t.shape.tolist()))))


@pytest.fixture(scope="module")
def dense_gguf(dense_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "dense.gguf"
    assert cli_main(["export", "gguf", str(dense_dir), str(out), "--dtype", "f32"]) == 0
    return out


def test_dense_metadata_and_vocabulary(dense_dir, dense_gguf):
    config = AutoModelForCausalLM.from_pretrained(dense_dir).config
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    meta = fields(gguf.GGUFReader(dense_gguf))
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert meta["llama.block_count"] == config.num_hidden_layers == 2
    assert meta["llama.embedding_length"] == 64
    assert meta["llama.feed_forward_length"] == 160
    assert meta["llama.attention.head_count"] == 4
    assert meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 16
    assert meta["llama.context_length"] == 256
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert "llama.expert_count" not in meta

    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    assert meta["tokenizer.ggml.tokens"] == [token for token, _ in by_id]
    assert meta["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # <pad> <s> </s>
    assert set(meta["tokenizer.ggml.token_type"][3:]) == {gguf.TokenType.NORMAL}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.padding_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the test tokenizer adds no BOS


def test_tokenizer_metadata_is_what_the_tokenizer_folder_says(tmp_path):
    chat = train_tokenizer(CORPUS, vocab_size=400, show_progress=False)  # `openllm tokenizer train`: unk, template
    bos_first = make_tokenizer()
    bos_first.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                                               special_tokens=[("<s>", 1)])
    for name, tok in [("chat", chat), ("bos_first", bos_first)]:
        src = make_checkpoint(tmp_path / name, tokenizer=tok)
        tok_config = json.loads((src / "tokenizer_config.json").read_text())
        # an add_bos_token flag contradicting the post-processor, which a fast tokenizer ignores: what it does counts
        (src / "tokenizer_config.json").write_text(json.dumps({**tok_config, "add_bos_token": name == "chat"}))
        meta = fields(gguf.GGUFReader(export_gguf(src, tmp_path / f"{name}.gguf", dtype="f32")))
        tokenizer = AutoTokenizer.from_pretrained(src)

        merges = json.loads((src / "tokenizer.json").read_text())["model"]["merges"]
        assert len(meta["tokenizer.ggml.merges"]) == len(merges) > 100
        assert meta["tokenizer.ggml.merges"][:5] == [" ".join(m) for m in merges[:5]]
        for kind, key in [("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")]:
            token = tok_config.get(f"{kind}_token")  # make_tokenizer's has no unk: no key
            assert meta.get(f"tokenizer.ggml.{key}_token_id") == (token and tokenizer.convert_tokens_to_ids(token))
        assert meta["tokenizer.ggml.add_bos_token"] is (tokenizer("a").input_ids[0] == tokenizer.bos_token_id)
        assert meta["tokenizer.ggml.add_bos_token"] is (name == "bos_first")
        template = src / "chat_template.jinja"
        assert template.exists() is (name == "chat")
        assert meta.get("tokenizer.chat_template") == (template.read_text() if template.exists() else None)


def test_dense_tensors_match_the_model(dense_dir, dense_gguf):
    model = AutoModelForCausalLM.from_pretrained(dense_dir)
    found = tensors(gguf.GGUFReader(dense_gguf))
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    expected |= {f"blk.{i}.{n}.weight" for i in range(2) for n in per_layer}
    assert set(found) == expected
    assert found["blk.0.attn_k.weight"].shape.tolist() == [64, 32]  # ggml order: (in, out)
    assert {int(t.tensor_type) for t in found.values()} == {gguf.GGMLQuantizationType.F32}

    layer = model.model.layers[1]
    torch.testing.assert_close(as_torch(found["token_embd.weight"]), model.model.embed_tokens.weight)
    torch.testing.assert_close(as_torch(found["output.weight"]), model.lm_head.weight)
    torch.testing.assert_close(as_torch(found["blk.1.ffn_down.weight"]), layer.mlp.down_proj.weight)
    torch.testing.assert_close(as_torch(found["blk.1.attn_v.weight"]), layer.self_attn.v_proj.weight)
    q = as_torch(found["blk.1.attn_q.weight"])
    assert not torch.equal(q, layer.self_attn.q_proj.weight)  # rows are permuted for llama.cpp's rope...
    torch.testing.assert_close(q, _rotary_permute(layer.self_attn.q_proj.weight, 4))  # ...per query head


def test_rotary_permutation_moves_rotate_half_pairs_next_to_each_other():
    head_dim, heads = 8, 2
    rows = torch.arange(heads * head_dim, dtype=torch.float32)[:, None]  # each row holds its own index
    permuted = _rotary_permute(rows, heads).flatten().tolist()
    # rotate-half pairs row i with i + 4 inside a head; llama.cpp pairs adjacent rows
    assert permuted == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_moe_experts_and_router(moe_dir, tmp_path):
    out = export_gguf(moe_dir, tmp_path / "moe.gguf", dtype="f16")
    reader = gguf.GGUFReader(out)
    meta, found = fields(reader), tensors(reader)
    assert meta["llama.expert_count"] == 4
    assert meta["llama.expert_used_count"] == 2
    assert meta["llama.feed_forward_length"] == 80  # each expert's width
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert "blk.0.ffn_gate.weight" not in found
    assert found["blk.0.ffn_gate_exps.weight"].shape.tolist() == [64, 80, 4]
    assert found["blk.0.ffn_down_exps.weight"].shape.tolist() == [80, 64, 4]
    assert found["blk.0.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # router stays f32
    assert found["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert found["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    experts = AutoModelForCausalLM.from_pretrained(moe_dir).model.layers[0].mlp.experts
    gate, up = experts.gate_up_proj.chunk(2, dim=1)
    torch.testing.assert_close(as_torch(found["blk.0.ffn_gate_exps.weight"]), gate, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(as_torch(found["blk.0.ffn_up_exps.weight"]), up, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(as_torch(found["blk.0.ffn_down_exps.weight"]), experts.down_proj, atol=1e-3,
                               rtol=1e-3)


def test_q8_0_weights_dequantize_close_to_the_originals(dense_dir, tmp_path):
    out = export_gguf(dense_dir, tmp_path / "q8.gguf", dtype="q8_0")
    found = tensors(gguf.GGUFReader(out))
    assert found["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert found["blk.0.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    original = AutoModelForCausalLM.from_pretrained(dense_dir).model.layers[0].mlp.up_proj.weight
    restored = as_torch(found["blk.0.ffn_up.weight"])
    # q8_0: one scale per 32 values, 8-bit codes → error at most half a step, i.e. max|w| / 254 per block
    assert (restored - original).abs().max() <= original.abs().max() / 254 + 1e-6
    assert (restored - original).abs().max() > 0


def test_scaled_rope_is_written_as_frequency_factors(tmp_path):
    src = make_checkpoint(tmp_path / "src", rope_parameters={"rope_type": "linear", "factor": 4.0})
    found = tensors(gguf.GGUFReader(export_gguf(src, tmp_path / "rope.gguf", dtype="f32")))
    torch.testing.assert_close(as_torch(found["rope_freqs.weight"]), torch.full((8,), 4.0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(decoder_sparse_step=2), "either every layer or no layer"),
        (dict(mlp_only_layers=[0]), "either every layer or no layer"),
        (dict(norm_topk_prob=False), "norm_topk_prob=False"),
        (dict(qk_norm=True), "cannot compute this model's function: qk_norm=True normalises queries and keys"),
        (dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0 caps the logits with tanh"),
    ],
)
def test_moe_layouts_llama_cpp_cannot_run_are_refused(tmp_path, overrides, message):
    preset = "tiny" if "qk_norm" in overrides or "final_logit_softcapping" in overrides else "tiny-moe"
    src = make_checkpoint(tmp_path / "src", preset=preset, **overrides)
    with pytest.raises(ValueError, match=message):
        export_gguf(src, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_bad_dtype_and_unsupported_pre_tokenizer(dense_dir, tmp_path):
    with pytest.raises(ValueError, match="Unknown GGUF dtype 'q4'"):
        export_gguf(dense_dir, tmp_path / "x.gguf", dtype="q4")
    state = json.loads(make_tokenizer().backend_tokenizer.to_str())
    assert _pre_tokenizer_name(state) == "gpt-2"
    llama3 = json.loads(make_tokenizer(split_regex=LLAMA3_REGEX).backend_tokenizer.to_str())
    assert _pre_tokenizer_name(llama3) == "llama-bpe"
    state["pre_tokenizer"]["add_prefix_space"] = True
    with pytest.raises(ValueError, match="adds no prefix space"):
        _pre_tokenizer_name(state)
    state["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(ValueError, match="'gpt-2' and 'llama-bpe'"):
        _pre_tokenizer_name(state)


# ---------------------------------------------------------------------------------------------------------------------
# llama.cpp itself (pip install 'openllm-hf[llamacpp]', ~4 minutes to build)
# ---------------------------------------------------------------------------------------------------------------------

PROMPTS = ["The quick brown fox", "Numbers like 3.14 and naïve café", "  two  spaces,\nnew line\tand tab!"]


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def llama_generate(path, prompt_ids, n):
    from llama_cpp import Llama

    # f32 KV cache (llama.cpp defaults to f16): random test models have top-2 logit gaps near 1e-2
    llm = Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True, type_k=0, type_v=0)
    try:
        llm.reset()
        out, tokens = [], list(prompt_ids)
        llm.eval(tokens)
        for _ in range(n):
            next_id = int(llm.scores[llm.n_tokens - 1].argmax())
            out.append(next_id)
            llm.eval([next_id])
        return out
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["dense", "moe", "llama3-rope"])
def test_llama_cpp_greedy_tokens_equal_transformers(llama_cpp, which, dense_dir, moe_dir, tmp_path):
    src = {"dense": dense_dir, "moe": moe_dir}.get(which)
    if which == "llama3-rope":  # scaled rotary frequencies travel as the `rope_freqs` tensor
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
        src = make_checkpoint(tmp_path / "src", rope_parameters=rope)
    out = export_gguf(src, tmp_path / f"{which}.gguf", dtype="f32")
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        for prompt in PROMPTS:  # llama.cpp's tokenizer agrees with the Hugging Face one
            assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == tokenizer(prompt)["input_ids"]
    finally:
        llm.close()
    for prompt in PROMPTS[:2]:
        ids = tokenizer(prompt, return_tensors="pt")
        expected = model.generate(**ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)[0]
        prompt_ids = ids.input_ids[0].tolist()
        assert llama_generate(out, prompt_ids, 16) == expected[len(prompt_ids):].tolist()


@pytest.mark.slow
def test_llama_cpp_tokenizes_like_the_llama3_style_split(llama_cpp, tmp_path):
    tokenizer = make_tokenizer(split_regex=LLAMA3_REGEX)
    out = export_gguf(make_checkpoint(tmp_path / "src", tokenizer=tokenizer), tmp_path / "l3.gguf", dtype="f32")
    assert fields(gguf.GGUFReader(out))["tokenizer.ggml.pre"] == "llama-bpe"
    llm = llama_cpp.Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        for prompt in PROMPTS + ["12345678 digits split by three", "DON'T shout, it's fine"]:
            assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == tokenizer(prompt)["input_ids"]
    finally:
        llm.close()
