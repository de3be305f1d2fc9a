"""vLLM serves OpenLLM folders: natively, through its transformers backend (`model_impl="transformers"`, dense and
MoE), and converted to Llama/Mixtral; greedy tokens equal transformers'. Its OpenAI server answers the `openai`
client with the same text. Runs in the vLLM environment: `make install-vllm && make test-vllm`. (This folder is not
named `vllm`: with tests/ on sys.path, it would shadow the package for every other test.)"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
PROMPTS = ["The quick brown fox", "A language model", "Perplexity is the", "Calibration asks whether"]
NEW_TOKENS = 12
# head_dim 64: the CPU build's attention kernel refuses some head sizes (16 among them)
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128)

VLLM_GENERATE = """
import json, sys
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    folder, prompts, new_tokens, impl = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    llm = LLM(model=folder, trust_remote_code=True, model_impl=impl, dtype="float32", max_model_len=256,
              enforce_eager=True, seed=0)
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True))
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
"""


def trained_folder(folder: Path, moe: bool, **overrides) -> Path:
    """A tiny OpenLLM model trained for a few hundred steps on a small corpus, saved with its code."""
    from helpers.tiny_lm import CORPUS, train_tokenizer

    import openllm

    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    config = openllm.get_preset_config("tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       **SHAPE, **(MOE if moe else {}), **overrides)
    model = openllm.OpenLLMForCausalLM(config)
    batch = tokenizer(CORPUS[:6], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_router_bias()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def transformers_greedy(folder: Path) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        out.append(generated[0, ids.shape[1]:].tolist())
    return out


def vllm_greedy(folder: Path, impl: str) -> list[list[int]]:
    run = subprocess.run([sys.executable, "-c", VLLM_GENERATE, str(folder), json.dumps(PROMPTS), str(NEW_TOKENS),
                          impl], capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return trained_folder(tmp_path_factory.mktemp("dense"), moe=False)


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    return trained_folder(tmp_path_factory.mktemp("moe"), moe=True)


@pytest.fixture(scope="module")
def moe_loss_free(tmp_path_factory):
    """Balanced by a routing bias (saved in the folder) instead of the auxiliary loss."""
    return trained_folder(tmp_path_factory.mktemp("moe-loss-free"), moe=True, router_expert_bias=True,
                          router_bias_update_rate=0.01, router_aux_loss_coef=0.0)


def test_the_folder_maps_the_base_model_for_vllm(dense):
    config = json.loads((dense / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_openllm.OpenLLMModel"
    assert (dense / "modeling_openllm.py").exists()


@pytest.mark.parametrize("kind", ["dense", "moe", "moe_loss_free"])
def test_vllm_transformers_backend_decodes_as_transformers(kind, request):
    folder = request.getfixturevalue(kind)
    if kind == "moe_loss_free":
        from safetensors.torch import load_file

        biases = [v for k, v in load_file(folder / "model.safetensors").items() if "e_score_correction_bias" in k]
        assert len(biases) == 2 and all(b.abs().max() >= 0.04 for b in biases)  # a bias that changes choices
    expected = transformers_greedy(folder)
    assert len({tuple(t) for t in expected}) > 1  # a trained model: the prompts lead to different text
    assert vllm_greedy(folder, "transformers") == expected


@pytest.mark.parametrize("kind,target", [("dense", "llama"), ("moe", "mixtral")])
def test_vllm_native_llama_and_mixtral_conversions_decode_as_transformers(kind, target, request, tmp_path):
    folder = request.getfixturevalue(kind)
    converted = tmp_path / target
    run = subprocess.run([sys.executable, "-m", "openllm", "convert", str(folder), str(converted), "--to", target],
                         capture_output=True, text=True, env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((converted / "config.json").read_text())["model_type"] == target
    assert vllm_greedy(converted, "auto") == transformers_greedy(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_openai_server_serves_the_folder_to_the_openai_client(dense):
    from openai import OpenAI
    from transformers import AutoTokenizer

    port = _free_port()
    # the `vllm serve` command fails in the vllm-cpu distribution (its metadata is named vllm-cpu); the module works
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(dense),
                               "--trust-remote-code", "--model-impl", "transformers", "--dtype", "float32",
                               "--max-model-len", "256", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
                               "--served-model-name", "openllm-tiny"],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, server.stderr.read()[-4000:]
            try:
                assert [m.id for m in client.models.list().data] == ["openllm-tiny"]
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        tokenizer = AutoTokenizer.from_pretrained(dense)
        expected = [tokenizer.decode(t) for t in transformers_greedy(dense)]
        completion = client.completions.create(model="openllm-tiny", prompt=PROMPTS, max_tokens=NEW_TOKENS,
                                               temperature=0.0, extra_body={"ignore_eos": True})
        assert [c.text for c in sorted(completion.choices, key=lambda c: c.index)] == expected
    finally:
        server.terminate()
        server.wait(timeout=60)
