"""Dense vs Mixture-of-Experts at equal active parameters: the speed of a training step, and a training run.

Step speed: one training step (forward, backward, AdamW) on random tokens, at this benchmark's shapes and at the
`small` preset's, in fp32 and bf16 autocast; each MoE model replaces every MLP with 4 experts half as wide, top-2, so
it spends the same parameters per token. The models take turns step by step (in reverse order every other round, so
that a change in the machine's load hits all alike); a ratio to dense is the median of the rounds' ratios.

Training: the quickstart's dense model (4 layers, hidden 128, MLP 384) against the same MoE layout balanced two ways:
the auxiliary loss, and DeepSeek-V3's loss-free bias (`router_expert_bias`, no auxiliary loss). The same data,
tokenizer, steps, batch and seed.

    python benchmarks/bench_moe.py [--write-readme] [--repeats 9] [--threads N]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from readme import machine_description, write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BASE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
MOE = dict(num_experts=4, num_experts_per_tok=2)
LOSS_FREE = dict(router_expert_bias=True, router_aux_loss_coef=0.0)
MODELS = {
    "dense": BASE,
    "MoE, auxiliary loss": dict(BASE, **MOE, moe_intermediate_size=192),
    "MoE, loss-free bias": dict(BASE, **MOE, moe_intermediate_size=192, **LOSS_FREE),
}
STEPS = 150


# ---------------------------------------------------------------------------------------------------------------------
# Step speed


def speed_models(shapes: dict) -> dict:
    """name → (config overrides, experts implementation) at `shapes`, MoE variants with experts half as wide."""
    moe = dict(shapes, **MOE, moe_intermediate_size=shapes["intermediate_size"] // 2)
    return {
        "dense": (shapes, None),
        "MoE, loop over experts (reference)": (moe, "eager"),
        "MoE, grouped (default)": (moe, None),
        "MoE, grouped, loss-free bias": (dict(moe, **LOSS_FREE), None),
    }


def step_speed(shapes: dict, batch: int, seq: int, repeats: int) -> dict:
    """{(model, precision): (tokens/s, ratio to dense)}: the median step time of `repeats` rounds, and the median of
    the rounds' dense-to-model step time ratios."""
    import torch

    from openllm import OpenLLMConfig, OpenLLMForCausalLM

    runs = {}
    for name, (overrides, experts) in speed_models(shapes).items():
        torch.manual_seed(0)
        model = OpenLLMForCausalLM(OpenLLMConfig(**overrides, attn_implementation="sdpa")).train()
        if experts:
            model.config._experts_implementation = experts
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    vocab = runs["dense"][0].config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step(model, optimizer, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_router_bias()

    speeds = {}
    for precision in ("fp32", "bf16"):
        times = {name: [] for name in runs}
        for model, optimizer in runs.values():  # warm-up: allocator, kernels, optimizer state
            step(model, optimizer, precision == "bf16")
        for round_ in range(repeats):
            for name in list(runs)[::-1 if round_ % 2 else 1]:
                model, optimizer = runs[name]
                start = time.perf_counter()
                step(model, optimizer, precision == "bf16")
                times[name].append(time.perf_counter() - start)
        for name, t in times.items():
            ratio = statistics.median(d / m for d, m in zip(times["dense"], t))
            speeds[name, precision] = batch * seq / statistics.median(t), ratio
        print(precision, {name: f"{speed:,.0f} tok/s ({ratio:.2f}×)" for (name, p), (speed, ratio) in speeds.items()
                          if p == precision}, flush=True)
    return speeds


def speed_table(repeats: int) -> str:
    from openllm.models.presets import PRESETS

    shapes = {
        "this benchmark (vocab 4096, 16 × 256 tokens)": (dict(BASE, vocab_size=4096), 16, 256),
        "`small` (vocab 32000, 4 × 512 tokens)": (dict(PRESETS["small"]), 4, 512),
    }
    rows = []
    for label, (overrides, batch, seq) in shapes.items():
        speeds = step_speed(overrides, batch, seq, repeats)
        for name in speed_models(overrides):
            cells = []
            for precision in ("fp32", "bf16"):
                speed, ratio = speeds[name, precision]
                cells.append(f"{speed:,.0f} | {ratio:.2f}×")
            rows.append(f"| {label} | {name} | {' | '.join(cells)} |")
    return ("| shapes | model | fp32 tokens/s | vs dense | bf16 autocast tokens/s | vs dense |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


# ---------------------------------------------------------------------------------------------------------------------
# Training runs


def busiest(load: dict) -> float | None:
    """The busiest expert's share × the number of experts, over layers (1.0 = balanced)."""
    return max((max(v) * len(v) for v in load.values()), default=None)


def train(name, overrides, out, tokenizer):
    from openllm.models.presets import parameter_counts
    from openllm.training.arguments import DataArguments, ModelArguments, PretrainConfig
    from openllm.training.pretrain import get_model_config, pretrain

    data = DataArguments(dataset_name="builtin:python-docs", text_column="text", eval_fraction=0.02,
                         block_size=256, vocab_size=4096, tokenizer_name_or_path=tokenizer)
    model = ModelArguments(model_preset="tiny", model_config_overrides=overrides)
    args = PretrainConfig(output_dir=out, max_steps=STEPS, per_device_train_batch_size=16, learning_rate=1e-3,
                          warmup_steps=15, eval_steps=STEPS, save_strategy="no", disable_tqdm=True, seed=42,
                          final_eval_documents=0, logging_steps=25)
    summary = pretrain(data, model, args)
    config = get_model_config(model)
    config.vocab_size = summary["data"]["vocab_size"]
    total, active = parameter_counts(config)
    m = summary["metrics"]
    run_load = busiest(m.get("expert_load") or {})
    last = [e["expert_load/max"] for e in summary["log_history"] if "expert_load/max" in e]
    dash = "–"
    return (f"| {name} | {total:,} | {active:,} | {m['tokens_seen']:,} | {m['eval_loss']:.4f} | "
            f"{m['bits_per_byte']:.4f} | {m['tokens_seen'] / summary['train_runtime_s']:,.0f} | "
            f"{dash if run_load is None else f'{run_load:.2f}'} | {f'{last[-1]:.2f}' if last else dash} |")


def training_table() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = None
        for i, (name, overrides) in enumerate(MODELS.items()):
            out = f"{tmp}/{i}"
            rows.append(train(name, overrides, out, tokenizer))
            print(rows[-1], flush=True)
            tokenizer = out  # later models reuse the first one's tokenizer
    return ("| model | total params | active params | tokens | eval loss | bits/byte | tokens/s | expert load (run) "
            "| expert load (last 25 steps) |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def main(write_readme: bool = False, repeats: int = 9, threads: int | None = None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    machine = f"{machine_description()}, {torch.get_num_threads()} threads"
    speed = speed_table(repeats)
    training = training_table()
    text = (f"Training step speed of MoE vs dense at equal active parameters ({machine}): forward, backward and "
            f"AdamW on random tokens; each MoE layer has 4 experts half as wide as the dense MLP, top-2. Medians of "
            f"{repeats} rounds, the models taking turns step by step; \"vs dense\" is the median of the rounds' step "
            "time ratios. The experts run as grouped matmuls over the tokens sorted by expert; the loop over experts "
            "is the reference they equal.\n\n" + speed + "\n\n"
            f"Dense vs MoE training ({machine}, bf16 autocast): built-in corpus, BPE 4k, {STEPS} steps of 16 × 256 "
            "tokens each, the same seed and schedule; held-out loss on the same documents. Expert load is the "
            "busiest expert's share × number of experts (1.0 = balanced), over the whole run and over the last "
            "logging window. The loss-free run has no auxiliary loss: a per-expert bias on the routing scores, "
            "moved by 0.001 a step toward the less loaded experts, chooses the experts.\n\n" + training)
    print(text)
    if write_readme:
        write_section("moe", text)


if __name__ == "__main__":
    def option(name, default):
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default

    main(write_readme="--write-readme" in sys.argv, repeats=option("--repeats", 9), threads=option("--threads", None))
