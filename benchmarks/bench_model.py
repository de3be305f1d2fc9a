"""OpenLLM `small` against transformers' `LlamaForCausalLM` with the same shapes and the same weights (converted with
`openllm.export.convert.to_llama`), measured side by side in one process on this machine.

Training: tokens/s of a full step (forward, backward, AdamW) on batches of random tokens, in eager mode and under
`torch.compile` (both models compiled, with SDPA or with eager attention), with freed memory reused from step to step
as every recipe trains (`openllm.training.allocator`); a second table measures that reuse on and off. Generation:
tokens/s of greedy `generate` with the KV cache, batch 1 and 16. Both in fp32 and under bf16 autocast. The two models
alternate step by step (and swap who goes first), so load from other processes hits both alike; rows report medians.
MFU counts 6·N + 12·L·T·d FLOPs per training token (PaLM's convention, N including the tied embedding as the output
layer) and 2·N + 4·L·T·d per generated token, against the matmul peak measured in the same run (large square
products). Peak RSS comes from a fresh process per cell that builds only that model and runs only that task (Linux
`VmHWM`).

    python benchmarks/run.py --only model [--write-readme]
"""

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from openllm.training.allocator import reuse_freed_memory  # noqa: E402

PRESET = "small"
BATCH, SEQ_LEN = 8, 256  # 2,048 tokens per training step
TRAIN_WARMUP, TRAIN_STEPS = 2, 8
PROMPT_LEN, NEW_TOKENS, GEN_WARMUP, GEN_RUNS = 32, 64, 1, 6
GEN_BATCHES = (1, 16)
# training setups: (torch.compile, attention implementation)
EAGER, COMPILED, COMPILED_EAGER_ATTENTION = (False, "sdpa"), (True, "sdpa"), (True, "eager")
SETUP_NAMES = {EAGER: "eager", COMPILED: "torch.compile", COMPILED_EAGER_ATTENTION: "torch.compile, eager attention"}
PEAK_SIZES, PEAK_REPEATS = (2048, 3072), 6
# memory reuse off and on: fresh processes alternate, each timing REUSE_STEPS steps after two warm-up ones
REUSE_CELLS = (("ours", "fp32", EAGER), ("ours", "bf16", EAGER), ("llama", "bf16", EAGER),
               ("ours", "bf16", COMPILED_EAGER_ATTENTION))
REUSE_ROUNDS, REUSE_STEPS = 2, 4


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it bf16 is emulated, far slower
    than fp32, and the bf16 rows are left out."""
    from openllm.training.arguments import cpu_supports_bf16

    return cpu_supports_bf16()


PRECISIONS = ("fp32", "bf16") if native_bf16() else ("fp32",)


def build_models():
    """(ours, llama) with identical weights; the logits check proves the comparison is like for like."""
    from openllm import OpenLLMForCausalLM, get_preset_config
    from openllm.export.convert import max_logit_difference, to_llama

    torch.manual_seed(0)
    ours = OpenLLMForCausalLM(get_preset_config(PRESET))
    llama = to_llama(ours)
    difference = max_logit_difference(ours.eval(), llama.eval())
    assert difference < 1e-4, f"the two models disagree by {difference}"
    return ours, llama


def autocast(precision):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def matmul_gflops(dtype, sizes=PEAK_SIZES, repeats=PEAK_REPEATS) -> float:
    """The machine's matmul peak: large square products (model-sized, skinny ones measure far lower and would
    overstate MFU), best of several repeats, best size."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(config, seq_len: int, training: bool) -> float:
    from openllm.models.presets import parameter_counts

    n = parameter_counts(config)[1]
    attention = 2 * config.num_hidden_layers * seq_len * config.num_attention_heads * config.head_dim
    return 6 * n + 6 * attention if training else 2 * n + 2 * attention


def prepared(model, setup):
    """The model itself in eager mode with SDPA, else a compiled copy (the original stays eager for other cells)."""
    compiled, attention = setup
    if setup == EAGER:
        return model
    model = copy.deepcopy(model)
    model.set_attn_implementation(attention)
    if compiled:
        model.compile()
    return model


class Trainer:
    """One model's training step on a fixed batch, with its own AdamW."""

    def __init__(self, model, precision, setup=EAGER):
        self.model, self.precision = prepared(model, setup).train(), precision
        # fused AdamW: the Trainer's default optimizer on torch >= 2.8
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        generator = torch.Generator().manual_seed(1)
        self.input_ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ_LEN), generator=generator)

    def step(self) -> float:
        start = time.perf_counter()
        with autocast(self.precision):
            loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


class Generator:
    def __init__(self, model, precision, batch=1):
        self.model, self.precision = model.eval(), precision
        generator = torch.Generator().manual_seed(2)
        self.prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT_LEN), generator=generator)

    def step(self) -> float:
        start = time.perf_counter()
        with torch.no_grad(), autocast(self.precision):
            out = self.model.generate(self.prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                      do_sample=False, pad_token_id=0)
        assert out.shape[1] == PROMPT_LEN + NEW_TOKENS
        return time.perf_counter() - start


# where a training step's CPU time goes: each ATen op's self time, by the first category whose words its name holds
CATEGORIES = {
    "matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn_matmul", "aten::_mkl"),
    "attention kernel": ("scaled_dot_product", "flash_attention"),
    "dtype casts and copies": ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"),
    "optimizer": ("adam",),
    "cross-entropy": ("log_softmax", "nll_loss", "logsumexp", "gather", "scatter"),
    # inductor's generated kernels: the fused norms, activations, casts, softmax and loss of a compiled step
    "fused kernels (torch.compile)": ("compiledfxgraph",),
}


def profile_breakdown(runner: "Trainer", steps: int = 3) -> dict[str, float]:
    """Share of one training step's self CPU time per category (torch.profiler, after the runner's warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    shares = dict.fromkeys([*CATEGORIES, "other (element-wise, norms, activations...)"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        category = next((c for c, words in CATEGORIES.items() if any(w.lower() in name for w in words)),
                        "other (element-wise, norms, activations...)")
        shares[category] += event.self_cpu_time_total
    total = sum(shares.values())
    return {category: time / total for category, time in shares.items()}


def interleaved(runners: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for runner in runners.values():
            runner.step()
    times = {name: [] for name in runners}
    names = list(runners)
    for i in range(steps):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(runners[name].step())
    return times


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_cell(model: str, task: str, precision: str, setup=EAGER, reuse: bool = True, steps: int = 0) -> dict:
    """A fresh process that builds only this model and runs only this cell (task `training`, `generation`, or
    `profile`: training under torch.profiler): its peak RSS (Linux `VmHWM`) and, for `steps` steps after two warm-up
    ones, each step's seconds and page faults, or the profile's shares. Fresh, because glibc's heap keeps the shape
    an earlier cell left it in."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    setup_index = str(list(SETUP_NAMES).index(setup))
    out = subprocess.run([sys.executable, __file__, "--cell", model, task, precision, setup_index, str(int(reuse)),
                          str(steps)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cell_child(model: str, task: str, precision: str, setup_index: str, reuse: str, steps: str) -> None:
    from transformers import LlamaForCausalLM

    from openllm import OpenLLMForCausalLM, get_preset_config
    from openllm.export.convert import llama_config

    config = get_preset_config(PRESET)
    torch.manual_seed(0)
    chosen = OpenLLMForCausalLM(config) if model == "ours" else LlamaForCausalLM(llama_config(config))
    setup = list(SETUP_NAMES)[int(setup_index)]
    runner = Generator(chosen, precision) if task == "generation" else Trainer(chosen, precision, setup)
    result = {"times": [], "faults": []}
    with reuse_freed_memory() if reuse == "1" else contextlib.nullcontext():
        for _ in range(2):
            runner.step()
        if task == "profile":
            result["profile"] = profile_breakdown(runner, int(steps))
        else:
            for _ in range(int(steps)):
                before = page_faults()
                result["times"].append(runner.step())
                result["faults"].append(page_faults() - before)
    # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across fork and exec
    status = Path("/proc/self/status").read_text()
    peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mib": peak_kib / 1024, **result}))


def memory_reuse_rows(peak: dict, flops: float) -> list[dict]:
    """A training step with glibc's default allocation against freed memory reused: fresh processes, the two
    settings alternating; medians over their timed steps, the higher peak RSS."""
    rows = []
    for model, precision, setup in REUSE_CELLS:
        if precision not in PRECISIONS:
            continue
        cells = {False: [], True: []}
        for round_ in range(REUSE_ROUNDS):
            for reuse in (False, True) if round_ % 2 == 0 else (True, False):
                cells[reuse].append(run_cell(model, "training", precision, setup, reuse, REUSE_STEPS))
        ms = {reuse: statistics.median(t for c in runs for t in c["times"]) * 1e3 for reuse, runs in cells.items()}
        faults = {reuse: statistics.median(f for c in runs for f in c["faults"]) for reuse, runs in cells.items()}
        rss = {reuse: max(c["peak_rss_mib"] for c in runs) for reuse, runs in cells.items()}
        mfu = {reuse: BATCH * SEQ_LEN / ms[reuse] * 1e3 * flops / (peak[precision] * 1e9) for reuse in ms}
        row = dict(model=model, precision=precision, setup=SETUP_NAMES[setup], ms=ms, faults=faults, rss=rss,
                   mfu=mfu, speedup=ms[False] / ms[True])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(write_readme: bool = False):
    torch.set_num_threads(torch.get_num_threads())
    # without native bf16 a 2048² bf16 product takes tens of seconds; a small one shows how slow emulation is
    peak = {"fp32": matmul_gflops(torch.float32),
            "bf16": matmul_gflops(torch.bfloat16, **({} if native_bf16() else dict(sizes=(512,), repeats=2)))}
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s", flush=True)
    ours, llama = build_models()
    config = ours.config

    rows = []
    cells = [("training", Trainer, {"setup": setup}, TRAIN_WARMUP, TRAIN_STEPS, BATCH * SEQ_LEN, True)
             for setup in SETUP_NAMES]
    cells += [(f"generation, batch {b}", Generator, {"batch": b}, GEN_WARMUP, GEN_RUNS, NEW_TOKENS * b, False)
              for b in GEN_BATCHES]
    for task, runner_class, kwargs, warmup, steps, tokens, training in cells:
        seq = SEQ_LEN if training else PROMPT_LEN + NEW_TOKENS // 2  # mean context length while generating
        flops = flops_per_token(config, seq, training)
        setup = kwargs.get("setup", EAGER)
        for precision in PRECISIONS:
            runners = {"ours": runner_class(ours, precision, **kwargs), "llama": runner_class(llama, precision,
                                                                                              **kwargs)}
            with reuse_freed_memory() if training else contextlib.nullcontext():
                times = interleaved(runners, warmup, steps)
            rate = {name: tokens / statistics.median(t) for name, t in times.items()}
            kind = task.split(",")[0]
            rss = {name: run_cell(name, kind, precision, setup, reuse=training)["peak_rss_mib"] for name in runners}
            row = dict(task=task, precision=precision, setup=SETUP_NAMES[setup], ours=rate["ours"],
                       llama=rate["llama"], ratio=rate["ours"] / rate["llama"],
                       mfu=rate["ours"] * flops / (peak[precision] * 1e9), rss_ours=rss["ours"],
                       rss_llama=rss["llama"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    reuse_rows = memory_reuse_rows(peak, flops_per_token(config, SEQ_LEN, True))

    # before: the eager step in each precision with glibc's default allocation; after: memory reused, then also
    # the fastest bf16 setup
    bf16 = PRECISIONS[-1]
    profiled = [(precision, EAGER, False) for precision in PRECISIONS] + [(bf16, EAGER, True),
                                                                          (bf16, COMPILED_EAGER_ATTENTION, True)]
    breakdown = {label(precision, SETUP_NAMES[setup]) + (", memory reused" if reuse else ""):
                 run_cell("ours", "profile", precision, setup, reuse, steps=3)["profile"]
                 for precision, setup, reuse in profiled}
    print(json.dumps(breakdown), flush=True)
    table = render(rows, reuse_rows, peak, config, breakdown)
    print(table)
    if write_readme:
        from readme import write_section

        write_section("model", table)


def label(precision: str, setup: str) -> str:
    return ("bf16 autocast" if precision == "bf16" else precision) + ("" if setup == "eager" else f", {setup}")


def render(rows, reuse_rows, peak, config, breakdown) -> str:
    from readme import machine_description

    from openllm.models.presets import parameter_counts

    emulated = "" if native_bf16() else " (emulated: this CPU has no AVX512-BF16/AMX, so bf16 rows are left out)"
    lines = [
        f"OpenLLM `{PRESET}` ({parameter_counts(config)[0] / 1e6:.1f}M parameters) vs transformers "
        f"`LlamaForCausalLM` with the same weights. {machine_description()}; "
        f"{torch.get_num_threads()} threads; matmul peak measured in the run (best of {PEAK_REPEATS} square "
        f"products of {' and '.join(map(str, PEAK_SIZES))}): {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.3g} "
        f"GFLOP/s bf16{emulated}. "
        f"Training: batch {BATCH}×{SEQ_LEN}, forward + backward + AdamW, eager or compiled (`torch.compile`, both "
        f"models, the first steps' compilation left out of the timing), freed memory reused from step to step as "
        f"the recipes train. "
        f"Generation: greedy, batch {' and '.join(map(str, GEN_BATCHES))}, {PROMPT_LEN}-token prompt, "
        f"{NEW_TOKENS} new tokens, KV cache.",
        "",
        "| task | setup | OpenLLM tokens/s | Llama tokens/s | OpenLLM / Llama | OpenLLM MFU | "
        "peak RSS OpenLLM / Llama (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {label(r['precision'], r['setup'])} | {r['ours']:,.0f} | {r['llama']:,.0f} | "
                     f"{r['ratio']:.2f}× | {r['mfu']:.0%} | {r['rss_ours']:,.0f} / {r['rss_llama']:,.0f} |")
    lines += [
        "",
        "The architectures compute the same logits; the one difference is the training loss: OpenLLM computes "
        "transformers' causal-LM cross-entropy (same value, same `num_items_in_batch` semantics) block by block in "
        "fp32, without full-size fp32 copies of the 32k-vocabulary logits, their log-softmax and their gradient "
        "(compiled, it takes the plain form, whose upcast inductor fuses into the softmax). Both models train with "
        "fused AdamW (the Trainer's default) and attention through SDPA unless the row says eager. Timings are "
        "medians of interleaved runs, so both models see the same machine state; single numbers move by several "
        "percent from run to run (generation, dominated by per-token Python overhead, the most), the ratio column is "
        "the steadier one. MFU counts 6 × parameters + attention FLOPs per token against the matmul peak measured in "
        "the run.",
        "",
        f"Reusing freed memory (`openllm.training.allocator`, on in every recipe that trains on CPU): a training "
        f"step with glibc's default allocation, where the large blocks a step frees go back to the kernel and return "
        f"as fresh pages it zero-fills on first touch, against freed memory kept for the next step. Each cell is a "
        f"fresh process (glibc's heap remembers earlier cells), {REUSE_ROUNDS} per setting, alternating; medians of "
        f"their {REUSE_STEPS} timed steps each, the higher peak RSS.",
        "",
        "| model | setup | ms/step, glibc default → reused | speed-up | page faults/step | MFU | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
        *(f"| {'OpenLLM' if r['model'] == 'ours' else 'Llama'} | {label(r['precision'], r['setup'])} | "
          f"{r['ms'][False]:.0f} → {r['ms'][True]:.0f} | {r['speedup']:.2f}× | {r['faults'][False]:,.0f} → "
          f"{r['faults'][True]:,.0f} | {r['mfu'][False]:.0%} → {r['mfu'][True]:.0%} | {r['rss'][False]:,.0f} → "
          f"{r['rss'][True]:,.0f} |" for r in reuse_rows),
        "",
        f"Where OpenLLM's training step spends its CPU time (`torch.profiler`, self time of each ATen op or compiled "
        f"graph, {BATCH}×{SEQ_LEN} tokens, forward + backward + AdamW, a fresh process per column; page faults count "
        f"in the op that first touches the page):",
        "",
        "| share of step time | " + " | ".join(breakdown) + " |",
        "|---|" + "---|" * len(breakdown),
    ]
    for category in next(iter(breakdown.values())):
        lines.append(f"| {category} | " + " | ".join(f"{shares[category]:.0%}" for shares in breakdown.values())
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cell", nargs=6, metavar=("MODEL", "TASK", "PRECISION", "SETUP", "REUSE", "STEPS"))
    args = parser.parse_args()
    if args.cell:
        _cell_child(*args.cell)
    else:
        sys.path.insert(0, str(HERE))
        main(write_readme=False)
