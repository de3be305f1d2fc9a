"""Mixture-of-Experts: the grouped experts kernel against the reference loop, and loss-free balancing.

"Equal" in fp32 means max |fast - reference| <= 1e-6 * max |reference| for every output and gradient: the same
products summed in another order, a few units in the last place of the tensor's largest value.
They run on transformers 5.x (`make test`) and 4.57 (`make test-compat`).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from openllm import OpenLLMConfig, OpenLLMForCausalLM
from openllm.export.convert import mixtral_config
from openllm.models import modeling_openllm
from openllm.models.modeling_openllm import (
    OpenLLMExperts,
    OpenLLMTopKRouter,
    eager_experts_forward,
    expert_load,
    grouped_experts_forward,
    load_balancing_loss,
)

VOCAB = 99


def moe_config(**overrides) -> OpenLLMConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, num_experts=4,
                  num_experts_per_tok=2, moe_intermediate_size=16)
    return OpenLLMConfig(**{**kwargs, **overrides})


def assert_equal_fp32(actual, expected, name=""):
    error = (actual - expected).abs().max().item()
    assert error <= 1e-6 * expected.abs().max().item(), f"{name}: max error {error:.3g}"


def experts_and_router(hidden, intermediate, experts, k, seed=0):
    torch.manual_seed(seed)
    # a renormalised top-1 weight is always 1: no gradient would reach the router
    config = OpenLLMConfig(vocab_size=VOCAB, hidden_size=hidden, num_attention_heads=4, num_experts=experts,
                           num_experts_per_tok=k, moe_intermediate_size=intermediate, norm_topk_prob=k > 1)
    module, router = OpenLLMExperts(config), OpenLLMTopKRouter(config)
    for p in (module.gate_up_proj, module.down_proj, router.weight):
        torch.nn.init.normal_(p, std=0.02)
    return module, router


def outputs_and_grads(forward, module, router, x, grad):
    """The experts' output and the gradients of the input, both expert weights and the router."""
    module.zero_grad()
    router.zero_grad()
    x = x.clone().requires_grad_()
    _, weights, index = router(x)
    y = forward(module, x, index, weights)
    y.backward(grad)
    return [y.detach(), x.grad, module.gate_up_proj.grad, module.down_proj.grad, router.weight.grad]


# --- the grouped kernel equals the loop -----------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,intermediate,experts,k,tokens", [
    (32, 16, 4, 2, 21),
    (128, 192, 4, 2, 4096),  # benchmarks/bench_moe.py's MoE layer, one 16 × 256 batch
    (64, 48, 8, 3, 500),  # three slots: a different summation order
    (64, 48, 8, 1, 500),
    (32, 16, 4, 4, 30),  # every expert for every token
])
def test_grouped_experts_equal_the_loop(hidden, intermediate, experts, k, tokens):
    module, router = experts_and_router(hidden, intermediate, experts, k)
    x = torch.randn(tokens, hidden)
    grad = torch.randn(tokens, hidden)
    reference = outputs_and_grads(eager_experts_forward, module, router, x, grad)
    fast = outputs_and_grads(grouped_experts_forward, module, router, x, grad)
    for name, a, b in zip(("output", "input", "gate_up_proj", "down_proj", "router"), fast, reference):
        assert_equal_fp32(a, b, name)


def test_grouped_experts_equal_the_loop_when_experts_get_no_tokens():
    module, router = experts_and_router(32, 16, 8, 2)
    with torch.no_grad():
        router.weight.zero_()
        router.weight[5, :] = 1.0  # inputs with positive sums go to expert 5, plus their best other expert
    x = torch.randn(40, 32).abs()
    grad = torch.randn(40, 32)
    reference = outputs_and_grads(eager_experts_forward, module, router, x, grad)
    fast = outputs_and_grads(grouped_experts_forward, module, router, x, grad)
    _, _, index = router(x)
    assert (torch.bincount(index.flatten(), minlength=8) == 0).sum() >= 3
    for a, b in zip(fast, reference):
        assert_equal_fp32(a, b)


def test_per_expert_matmuls_where_no_grouped_kernel_fits(monkeypatch):
    """Other devices, dtypes or an older torch: one matmul per expert over its rows, still equal to the loop."""
    monkeypatch.setattr(modeling_openllm, "_GROUPED_MM", None)
    module, router = experts_and_router(64, 48, 8, 2)
    x, grad = torch.randn(300, 64), torch.randn(300, 64)
    reference = outputs_and_grads(eager_experts_forward, module, router, x, grad)
    for a, b in zip(outputs_and_grads(grouped_experts_forward, module, router, x, grad), reference):
        assert_equal_fp32(a, b)


def test_grouped_experts_under_bf16_autocast_match_the_loop():
    """Both run their matmuls in bf16 under autocast (the grouped kernel is cast by hand) and sum in fp32."""
    module, router = experts_and_router(128, 192, 4, 2)
    x, grad = torch.randn(512, 128), torch.randn(512, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = outputs_and_grads(eager_experts_forward, module, router, x, grad)
        fast = outputs_and_grads(grouped_experts_forward, module, router, x, grad)
    assert fast[0].dtype == reference[0].dtype == torch.float32
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, atol=1e-2 * b.abs().max().item(), rtol=0)


def test_model_uses_the_grouped_kernel_by_default_and_equals_the_loop(monkeypatch):
    calls = []
    grouped_mm = modeling_openllm._grouped_mm
    monkeypatch.setattr(modeling_openllm, "_grouped_mm", lambda *args: calls.append(1) or grouped_mm(*args))
    torch.manual_seed(0)
    model = OpenLLMForCausalLM(moe_config(mlp_only_layers=[0])).train()
    ids = torch.randint(3, VOCAB, (3, 7))

    def run():
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        return [out.logits.detach()] + [p.grad for p in model.parameters()]

    fast = run()
    assert len(calls) == 3  # one MoE layer: gate, up and down projections
    model.config._experts_implementation = "eager"  # `from_pretrained(..., experts_implementation="eager")` on 5.x
    reference = run()
    assert len(calls) == 3
    for a, b in zip(fast, reference):
        assert_equal_fp32(a, b)


# --- loss-free balancing ---------------------------------------------------------------------------------------------


def routers(model):
    return [layer.mlp.gate for layer in model.model.layers if layer.is_moe]


def test_no_bias_unless_asked_and_old_checkpoints_load_as_before(tmp_path):
    torch.manual_seed(0)
    model = OpenLLMForCausalLM(moe_config()).eval()
    assert not any("e_score_correction_bias" in name for name in model.state_dict())
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("router_expert_bias", "router_bias_update_rate"):  # a checkpoint written before these existed
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not loaded.config.router_expert_bias
    assert loaded.state_dict().keys() == model.state_dict().keys()
    ids = torch.randint(3, VOCAB, (2, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_bias_chooses_experts_but_weights_stay_the_probabilities():
    torch.manual_seed(0)
    router = OpenLLMTopKRouter(moe_config(router_expert_bias=True)).eval()
    torch.nn.init.normal_(router.weight, std=0.5)
    x = torch.randn(50, 32)
    logits, weights, index = router(x)
    assert torch.equal(index, torch.topk(logits, 2).indices)  # a zero bias changes nothing
    router.e_score_correction_bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    _, weights, index = router(x)
    probs = F.softmax(logits, dim=-1)
    assert (index == 0).any(-1).all()  # the bias puts every token on expert 0 ...
    expected = probs.gather(-1, index)
    torch.testing.assert_close(weights, expected / expected.sum(-1, keepdim=True))  # ... with its own probability
    assert "e_score_correction_bias" not in dict(router.named_parameters())  # not learned by gradient


def test_bias_moves_toward_balance_under_a_skewed_router():
    torch.manual_seed(0)
    rate = 0.01
    model = OpenLLMForCausalLM(moe_config(router_expert_bias=True, router_bias_update_rate=rate)).train()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 1.0  # a direction every token's hidden state shares ...
        for router in routers(model):
            torch.nn.init.normal_(router.weight, std=1.0)
            router.weight[:, 0] = 0.0
            router.weight[0, 0] = 0.3  # ... raises expert 0's score for every token
    ids = torch.randint(3, VOCAB, (8, 16))

    def observe():
        with torch.no_grad():
            model(ids)
        return torch.stack([router.routed_tokens for router in routers(model)]).float()  # (layers, E)

    counts = observe()
    assert (counts[:, 0] / counts.sum(-1) == 0.5).all()  # expert 0 is among every token's two
    model.update_router_bias()
    for router, count in zip(routers(model), counts):  # one sign step from the observed counts
        assert torch.equal(router.e_score_correction_bias, torch.sign(count.mean() - count) * rate)
        assert router.routed_tokens is None
    for _ in range(60):
        observe()
        model.update_router_bias()
    total = 0
    for _ in range(20):  # the sign steps end in a small cycle around balance: average over it
        total = total + observe()
        model.update_router_bias()
    share = total / total.sum(-1, keepdim=True)
    assert share.max() < 0.3 and share.min() > 0.2, share  # 0.25 is balanced
    assert all(router.e_score_correction_bias[0] < -0.1 for router in routers(model))


def test_bias_is_not_updated_in_eval_or_generation():
    torch.manual_seed(0)
    model = OpenLLMForCausalLM(moe_config(router_expert_bias=True, router_bias_update_rate=0.01)).eval()
    for router in routers(model):
        router.e_score_correction_bias.copy_(torch.tensor([0.03, -0.01, 0.0, 0.02]))
    before = [router.e_score_correction_bias.clone() for router in routers(model)]
    ids = torch.randint(3, VOCAB, (2, 6))
    model(ids, labels=ids)
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert all(router.routed_tokens is None for router in routers(model))
    model.update_router_bias()
    for router, bias in zip(routers(model), before):
        assert torch.equal(router.e_score_correction_bias, bias)
    model.train()
    model(ids, labels=ids).loss.backward()  # a training step moves it only through update_router_bias
    for router, bias in zip(routers(model), before):
        assert torch.equal(router.e_score_correction_bias, bias)


def test_aux_loss_and_expert_load_count_the_biased_choice():
    torch.manual_seed(0)
    logits = torch.randn(64, 4)
    bias = torch.tensor([0.0, 0.0, 0.0, 2.0])  # expert 3 in every token's top 2
    assert expert_load(logits, 2, bias)[3] == 0.5
    probs = F.softmax(logits, dim=-1)
    fraction = F.one_hot(torch.topk(probs + bias, 2).indices, 4).sum(1).float().mean(0)
    torch.testing.assert_close(load_balancing_loss(logits, 2, expert_bias=bias), 4 * (fraction * probs.mean(0)).sum())
    model = OpenLLMForCausalLM(moe_config(router_expert_bias=True)).eval()
    for router in routers(model):
        router.e_score_correction_bias.copy_(bias)
    ids = torch.randint(3, VOCAB, (2, 5))
    out = model(ids, output_router_logits=True)
    expected = torch.stack([load_balancing_loss(r, 2, expert_bias=bias) for r in out.router_logits]).mean()
    torch.testing.assert_close(out.aux_loss, expected)


def test_bias_is_saved_and_loads_without_openllm(tmp_path):
    torch.manual_seed(0)
    model = OpenLLMForCausalLM(moe_config(router_expert_bias=True)).eval()
    for i, router in enumerate(routers(model)):
        router.e_score_correction_bias.copy_(torch.tensor([0.05, -0.02, 0.01, -0.04]) * (i + 1))
    model.save_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (2, 7))
    torch.save({"ids": ids, "logits": model(ids).logits, "state": model.state_dict()}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openllm"] = None
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        data = torch.load({str(tmp_path / "expected.pt")!r})
        state = model.state_dict()
        for key, value in data["state"].items():
            assert torch.equal(state[key], value), key
        torch.testing.assert_close(model(data["ids"]).logits, data["logits"], atol=0, rtol=0)
        print("OK")
    """)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_a_model_with_a_routing_bias_is_not_converted_to_mixtral():
    assert mixtral_config(moe_config())  # without it, it is
    with pytest.raises(ValueError, match="router_expert_bias=True"):
        mixtral_config(moe_config(router_expert_bias=True))
    with pytest.raises(ValueError, match="router_bias_update_rate"):
        moe_config(router_bias_update_rate=-0.1)


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, sys.argv[3])
from test_moe import moe_config, routers
from openllm import OpenLLMForCausalLM

rank, world = int(sys.argv[1]), 2
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=world)
torch.manual_seed(0)  # the same weights on both ranks
model = OpenLLMForCausalLM(moe_config(router_expert_bias=True, router_bias_update_rate=0.01)).train()
ddp = DistributedDataParallel(model)
torch.manual_seed(1 + rank)  # different data per rank
for step in range(3):
    ids = torch.randint(3, 99, (4, 8 + 8 * rank))
    ddp(input_ids=ids, labels=ids).loss.backward()
    local = torch.stack([r.routed_tokens for r in routers(model)])
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    before = torch.stack([r.e_score_correction_bias for r in routers(model)])
    model.update_router_bias()
    after = torch.stack([r.e_score_correction_bias for r in routers(model)])
    total = sum(gathered).float()
    assert not torch.equal(gathered[0], gathered[1])
    assert torch.equal(after - before, torch.sign(total.mean(-1, keepdim=True) - total) * 0.01), (step, rank)
biases = [torch.zeros_like(after) for _ in range(world)]
dist.all_gather(biases, after)
assert torch.equal(biases[0], biases[1])
print("OK", rank)
dist.destroy_process_group()
"""


def test_ddp_ranks_update_the_bias_from_the_summed_load(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.abspath(src)}
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / "store"), here], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for rank, (p, (out, err)) in enumerate(zip(procs, results)):
        assert p.returncode == 0, err[-3000:]
        assert out.strip().endswith(f"OK {rank}")


def test_trainer_updates_the_bias_once_per_optimizer_step(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from openllm.training.run import with_run_layer

    torch.manual_seed(0)
    rate = 0.01
    model = OpenLLMForCausalLM(moe_config(router_expert_bias=True, router_bias_update_rate=rate))
    ids = torch.randint(3, VOCAB, (24, 8))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    updates = []
    update = model.update_router_bias
    model.update_router_bias = lambda: updates.append(1) or update()
    args = TrainingArguments(str(tmp_path), max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, logging_steps=100)
    with_run_layer(Trainer)(model=model, args=args, train_dataset=data).train()
    assert len(updates) == 3  # one per optimizer step, not per micro-batch
    for router in routers(model):
        steps = router.e_score_correction_bias / rate
        assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 3 and steps.any()
