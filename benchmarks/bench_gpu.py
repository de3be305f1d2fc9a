"""Training throughput and MFU of the model presets on one CUDA GPU, set up as a training run sets itself up.

Each preset is built with `AutoModelForCausalLM.from_config` (vocabulary 32,768) with the fastest attention the machine
has (FlashAttention 3 on Hopper, FlashAttention 2 on Ampere and newer, else PyTorch's SDPA), fp32 master weights under
bf16 autocast (what the Trainer does with `bf16=True`), gradient clipping at 1.0 and fused AdamW. It trains on random
tokens: a few warm-up steps, then timed steps, each closed by `torch.cuda.synchronize()`; rows report the median step.
A batch that does not fit is halved until it does; the table says which batch ran.

MFU counts 6·N + 12·L·H·T FLOPs per token (PaLM's convention, as nanoGPT): N the active parameters that take part in
a matmul (every non-embedding weight plus the LM head, which with tied embeddings is the embedding matrix; the input
embedding itself is a lookup), L layers, H = heads × head width, T the sequence length. It is shown against two peaks:
bf16 matmul throughput measured in the same run on large square products (what this GPU sustains, the honest
denominator), and the datasheet's dense bf16 figure when the device is known (what vendors quote; higher).

    python benchmarks/bench_gpu.py [--presets small medium large moe] [--steps 10] [--batch-size 32 16 8 32]
                                   [--seq-len 2048] [--compile] [--write-readme]
    python benchmarks/bench_gpu.py --device cpu --dry-run   # the code path on a CPU: tiny presets, fp32, 2 steps
    python benchmarks/run.py --only gpu [--write-readme]    # prints a skip line on machines without CUDA
"""

import argparse
import gc
import importlib
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

VOCAB_SIZE = 32768
# (batch, sequence length) per preset, sized for an 80 GB GPU
DEFAULTS = {"small": (32, 1024), "medium": (16, 2048), "large": (8, 2048), "moe": (32, 1024)}
WARMUP, STEPS = 3, 10
# --dry-run: checks the code path, measures nothing worth keeping
DRY_RUN = {"presets": ("tiny", "tiny-moe"), "batch": 2, "seq_len": 128, "warmup": 1, "steps": 2}
PEAK_SIZE, PEAK_REPEATS = 8192, 10
# dense bf16 tensor-core TFLOP/s from NVIDIA's datasheets (the sparse figures are twice these), first match wins
DATASHEET_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H200 NVL": 835, "H100": 989, "H200": 989, "A100": 312,
                    "L40S": 362, "L4": 121}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device, dtype, size=PEAK_SIZE, repeats=PEAK_REPEATS) -> float:
    """Sustained matmul throughput: median of several timings of 5 back-to-back square products. Square and large,
    because model-sized (skinny) products run slower and a peak taken on them would overstate MFU."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    for _ in range(3):  # cuBLAS picks its kernel and the clocks ramp up
        torch.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(5):
            torch.matmul(a, b, out=out)
        synchronize(device)
        times.append((time.perf_counter() - start) / 5)
    return 2 * size**3 / statistics.median(times) / 1e12


def datasheet_tflops(device) -> float | None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((tflops for key, tflops in DATASHEET_TFLOPS.items() if key in name), None)


def attention_candidates(device) -> list[str]:
    """Attention implementations to try, fastest first. FlashAttention 3 runs on Hopper (sm90) only,
    FlashAttention 2 on Ampere (sm80) and newer; each only if its package actually imports."""
    if device.type != "cuda":
        return ["sdpa"]
    major, _ = torch.cuda.get_device_capability(device)
    candidates = []
    for name, module, supported in (("flash_attention_3", "flash_attn_interface", major == 9),
                                    ("flash_attention_2", "flash_attn", major >= 8)):
        if not supported:
            continue
        try:
            importlib.import_module(module)
        except (ImportError, OSError):  # OSError: a wheel built against another torch or CUDA
            continue
        candidates.append(name)
    return [*candidates, "sdpa"]


def flops_per_token(config, seq_len: int) -> float:
    from openllm.models.presets import parameter_counts

    active = parameter_counts(config)[1]
    input_embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return 6 * (active - input_embedding) + attention


def build(config, device, compile: bool):
    """(model, optimizer, attention implementation), trying each attention implementation until one loads."""
    from transformers import AutoModelForCausalLM

    import openllm  # noqa: F401  (registers OpenLLMConfig with the Auto classes)

    for attention in attention_candidates(device):
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
            break
        except (ImportError, ValueError) as error:  # transformers refuses a kernel it cannot use
            print(f"{attention} unavailable ({error}), trying the next", flush=True)
    model = model.to(device, torch.float32).train()  # fp32 master weights; autocast runs the matmuls in bf16
    if compile:
        model.compile()
    try:  # fused AdamW is the Trainer's default optimizer on torch >= 2.8
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer, attention


def measure(preset: str, batch: int, seq_len: int, device, compile: bool, warmup: int, steps: int) -> dict:
    from openllm.models.presets import PRESETS, get_preset_config, parameter_counts

    torch.manual_seed(0)
    config = get_preset_config(preset, vocab_size=VOCAB_SIZE,
                               max_position_embeddings=max(seq_len, PRESETS[preset]["max_position_embeddings"]))
    model, optimizer, attention = build(config, device, compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = device.type == "cuda"  # CPUs without native bf16 emulate it, far slower than fp32
    times = []
    for step in range(warmup + steps):
        input_ids = torch.randint(0, VOCAB_SIZE, (batch, seq_len), device=device)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer's default max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= warmup:  # the warm-up steps include allocator growth, cuBLAS autotuning and compilation
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    total, active = parameter_counts(config)
    return dict(preset=preset, total=total, active=active, seq_len=seq_len, batch=batch, attention=attention,
                compile=compile, tokens_per_s=batch * seq_len / seconds, step_ms=seconds * 1e3,
                peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                flops_per_token=flops_per_token(config, seq_len), loss=loss.item())


def measure_largest_batch(preset: str, batch: int, **kwargs) -> dict:
    """`measure`, halving the batch until it fits in GPU memory."""
    while True:
        try:
            return measure(preset, batch, **kwargs)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        # outside the except block, so the traceback no longer holds the failed step's tensors
        gc.collect()
        torch.cuda.empty_cache()
        print(f"{preset}: batch {batch} does not fit, trying {batch // 2}", flush=True)
        batch //= 2


def render(rows: list[dict], device, peak: dict, datasheet: float | None, warmup: int, steps: int) -> str:
    import transformers

    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__} (CUDA {torch.version.cuda})"
        precision = "fp32 master weights, bf16 autocast"
    else:
        name = f"CPU (dry run: the numbers mean nothing), torch {torch.__version__}"
        precision = "fp32"
    sheet = f"{datasheet:,.0f} TFLOP/s dense bf16" if datasheet else "unknown for this device"
    lines = [
        f"{name}, transformers {transformers.__version__}, {date.today().isoformat()}. Training step: forward + "
        f"backward + clipping + fused AdamW, {precision}, random tokens, vocabulary {VOCAB_SIZE:,}; median of "
        f"{steps} timed steps after {warmup} warm-up. "
        f"MFU = (6·N + 12·L·H·T) FLOPs per token × tokens/s, N the active matmul parameters, against the matmul "
        f"peak measured in this run ({peak['size']}³ products, median of {peak['repeats']}: {peak['label']}) and the "
        f"datasheet peak ({sheet}).",
        "",
        "| preset | params total / active | seq len | batch | attention | compile | tokens/s | step (ms) | "
        "peak memory (GiB) | MFU vs measured peak | MFU vs datasheet |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        achieved = r["flops_per_token"] * r["tokens_per_s"] / 1e12  # TFLOP/s
        memory = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        versus_sheet = f"{achieved / datasheet:.1%}" if datasheet else "–"
        lines.append(f"| `{r['preset']}` | {r['total'] / 1e6:.1f}M / {r['active'] / 1e6:.1f}M | {r['seq_len']} | "
                     f"{r['batch']} | {r['attention']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {memory} | {achieved / peak['tflops']:.1%} | "
                     f"{versus_sheet} |")
    return "\n".join(lines)


def main(write_readme: bool = False, presets=None, steps: int = STEPS, batch_sizes=None, seq_len=None,
         compile: bool = False, device: str = "cuda", dry_run: bool = False):
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("The GPU benchmark needs a CUDA device; skipped (no CUDA device on this machine).")
        return
    warmup = WARMUP
    if dry_run or device.type == "cpu":  # the CPU path is a smoke test of the code, never a measurement
        dry_run, warmup, steps = True, DRY_RUN["warmup"], DRY_RUN["steps"]
        presets = presets or DRY_RUN["presets"]
    presets = presets or list(DEFAULTS)
    batch_sizes = batch_sizes or [None]
    if len(batch_sizes) not in (1, len(presets)):
        raise SystemExit(f"--batch-size takes one value or one per preset ({len(presets)})")
    batch_sizes = batch_sizes * len(presets) if len(batch_sizes) == 1 else batch_sizes

    # a CPU checks the code path only: fp32, a product small enough to take a moment
    peak = dict(size=PEAK_SIZE, repeats=PEAK_REPEATS) if device.type == "cuda" else dict(size=1024, repeats=3)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak["tflops"] = matmul_peak_tflops(device, dtype, peak["size"], peak["repeats"])
    peak["label"] = (f"{peak['tflops']:,.0f} TFLOP/s bf16" if device.type == "cuda"
                     else f"{peak['tflops'] * 1e3:,.0f} GFLOP/s fp32")
    datasheet = datasheet_tflops(device)
    print(f"matmul peak measured: {peak['label']}; datasheet (dense bf16): {datasheet or 'unknown'}", flush=True)
    rows = []
    for preset, batch in zip(presets, batch_sizes):
        default_batch, default_seq = (DRY_RUN["batch"], DRY_RUN["seq_len"]) if dry_run else DEFAULTS.get(
            preset, (8, 2048))
        row = measure_largest_batch(preset, batch or default_batch, seq_len=seq_len or default_seq, device=device,
                                    compile=compile, warmup=warmup, steps=steps)
        rows.append(row)
        print(f"{preset}: {row['tokens_per_s']:,.0f} tokens/s, {row['step_ms']:.1f} ms/step, loss {row['loss']:.2f}",
              flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = render(rows, device, peak, datasheet, warmup, steps)
    print(table)
    if write_readme and device.type == "cuda" and not dry_run:
        from readme import write_section

        write_section("gpu", table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", help=f"default: {' '.join(DEFAULTS)}")
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per preset, after the warm-up ones")
    parser.add_argument("--batch-size", type=int, nargs="+", help="one for every preset, or one per preset")
    parser.add_argument("--seq-len", type=int, help="default: 1024 for small and moe, 2048 for medium and large")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, which implies --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="tiny presets, 2 steps: checks the code path")
    parser.add_argument("--write-readme", action="store_true", help="write the table into README.md (CUDA only)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    main(write_readme=args.write_readme, presets=args.presets, steps=args.steps, batch_sizes=args.batch_size,
         seq_len=args.seq_len, compile=args.compile, device=args.device, dry_run=args.dry_run)
