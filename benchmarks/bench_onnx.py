"""ONNX Runtime against PyTorch on CPU, and what dynamic int8 quantization costs in perplexity.

Trains a small OpenLLM model on Python standard-library docstrings (offline, a few minutes), exports it with
`openllm export onnx --quantize int8`, then measures perplexity on held-out docstrings, prefill latency and greedy
decoding speed for PyTorch, ONNX Runtime fp32 and ONNX Runtime int8.

Needs the compat environment (optimum-onnx pins transformers<4.58):
    make install-compat && .venv-compat/bin/python benchmarks/run.py --only onnx [--write-readme]
"""

import inspect
import math
import os
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CONFIG = dict(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
BLOCK, BATCH, STEPS, LR = 128, 4, 120, 5e-3
HOW_TO_RUN = "make install-compat && .venv-compat/bin/python benchmarks/run.py --only onnx"


def docstring_corpus() -> list[str]:
    """Docstrings of the standard library's pure-Python modules: a few MB of English prose and code, offline."""
    import importlib
    import warnings

    texts = []
    stdlib = Path(inspect.getfile(os)).parent
    for info in sorted(pkgutil.iter_modules([str(stdlib)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(info.name)
        except Exception:
            continue
        for obj in [module, *vars(module).values()]:
            doc = inspect.getdoc(obj) if getattr(obj, "__module__", info.name) == info.name else None
            if doc and len(doc) > 200:
                texts.append(doc)
    return list(dict.fromkeys(texts))


def train(texts, out_dir: Path):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import openllm

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["vocab_size"], special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        model_input_names=["input_ids", "attention_mask"])
    ids = torch.tensor([i for t in texts for i in tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]])
    blocks = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)
    held_out, train_blocks = blocks[:64], blocks[64:]

    torch.manual_seed(0)
    config = openllm.OpenLLMConfig(**CONFIG, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    model = openllm.OpenLLMForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    model.train()
    for step in range(STEPS):
        batch = train_blocks[torch.randint(len(train_blocks), (BATCH,))]
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == STEPS - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return held_out, len(train_blocks) * BLOCK


def perplexity(model, blocks) -> float:
    import torch

    losses = []
    with torch.no_grad():
        for block in blocks:
            logits = model(input_ids=block[None], attention_mask=torch.ones_like(block[None])).logits[0, :-1]
            losses.append(torch.nn.functional.cross_entropy(logits.float(), block[1:]).item())
    return math.exp(sum(losses) / len(losses))


def timings(model, blocks, tokenizer) -> tuple[float, float]:
    """(median prefill ms for one 128-token block, greedy tokens/s for 64 new tokens from a 16-token prompt)."""
    import torch

    prefill = []
    with torch.no_grad():
        for block in blocks[:12]:
            start = time.perf_counter()
            model(input_ids=block[None], attention_mask=torch.ones_like(block[None]))
            prefill.append(time.perf_counter() - start)
        decode = []
        for block in blocks[:3]:
            prompt = block[None, :16]
            start = time.perf_counter()
            model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                           min_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            decode.append(64 / (time.perf_counter() - start))
    prefill.sort()
    decode.sort()
    return 1000 * prefill[len(prefill) // 2], decode[len(decode) // 2]


def main(write_readme: bool = False):
    from openllm.export.onnx import check_onnx_environment

    try:
        check_onnx_environment()
    except RuntimeError as e:
        print(f"bench_onnx needs the ONNX export environment and did not run.\n{e}\nRun it with: {HOW_TO_RUN}")
        return None

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openllm.export import export_onnx, load_onnx_model

    work = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    texts = docstring_corpus()
    print(f"corpus: {len(texts)} docstrings, {sum(map(len, texts)) / 1e6:.1f} MB; training {STEPS} steps", flush=True)
    held_out, train_tokens = train(texts, work / "model")
    export_onnx(work / "model", work / "onnx", quantize="int8")
    tokenizer = AutoTokenizer.from_pretrained(work / "model")

    threads = torch.get_num_threads()
    runs = {
        "PyTorch fp32": AutoModelForCausalLM.from_pretrained(work / "model").eval(),
        "ONNX Runtime fp32": load_onnx_model(work / "onnx", session_options=_ort_options(threads)),
        "ONNX Runtime int8": load_onnx_model(work / "onnx", quantized=True, session_options=_ort_options(threads)),
    }
    sizes = {"PyTorch fp32": sum(p.numel() * 4 for p in runs["PyTorch fp32"].parameters()),
             "ONNX Runtime fp32": (work / "onnx" / "model.onnx").stat().st_size,
             "ONNX Runtime int8": (work / "onnx" / "model_quantized.onnx").stat().st_size}
    rows = []
    for name, model in runs.items():
        ppl = perplexity(model, held_out)
        prefill_ms, tokens_per_s = timings(model, held_out, tokenizer)
        rows.append((name, ppl, prefill_ms, tokens_per_s, sizes[name] / 2**20))
        print(f"  {name:18s} ppl {ppl:8.3f}  prefill {prefill_ms:6.1f} ms  decode {tokens_per_s:6.1f} tok/s",
              flush=True)

    params = sum(p.numel() for p in runs["PyTorch fp32"].parameters())
    base_ppl, base_prefill, base_decode = rows[0][1], rows[0][2], rows[0][3]
    lines = [
        f"ONNX Runtime vs PyTorch, {params / 1e6:.1f}M-parameter OpenLLM model ({CONFIG['num_hidden_layers']} "
        f"layers, hidden {CONFIG['hidden_size']}) trained {STEPS} steps of {BATCH}×{BLOCK} tokens on "
        f"{train_tokens / 1e6:.2f}M tokens of standard-library docstrings; perplexity on {len(held_out)} held-out "
        f"blocks of {BLOCK} tokens; prefill = one {BLOCK}-token forward, decode = greedy `generate` "
        f"of 64 tokens with KV cache (medians); {threads} threads each. "
        f"transformers 4.57, optimum-onnx, onnxruntime. {_machine()}.",
        "",
        "| runtime | perplexity | Δ perplexity | prefill ms | prefill speed-up | decode tok/s | decode speed-up "
        "| size MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ppl, prefill_ms, tokens_per_s, size in rows:
        lines.append(f"| {name} | {ppl:.3f} | {100 * (ppl / base_ppl - 1):+.2f}% | {prefill_ms:.1f} | "
                     f"{base_prefill / prefill_ms:.2f}× | {tokens_per_s:.1f} | {tokens_per_s / base_decode:.2f}× | "
                     f"{size:.1f} |")
    table = "\n".join(lines)
    print(table)
    if write_readme:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from readme import write_section

        write_section("onnx", table)
    return rows


def _ort_options(threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the same thread count as PyTorch, for a fair race
    return options


def _machine() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readme import machine_description

    return machine_description()


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
