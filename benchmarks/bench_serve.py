"""Load test of `openllm serve` on loopback: 1, 4 and 16 concurrent clients against one server process.

The model is the `small` preset with random weights (serving speed does not depend on what the weights learned)
and a byte-level BPE tokenizer trained here on Python's standard library sources. Every request asks for exactly
`NEW_TOKENS` greedy tokens (the model has no EOS token, so none stops early), so every concurrency level does the
same work per request. For reference, the same 16 prompts also go through one plain batched `model.generate` call,
through the serving engine in-process (no HTTP), and through transformers' continuous batching (`generate_batch`).

Then the per-token overhead of the server itself: with the `tiny` preset (2 layers, 64 wide) the model costs almost
nothing, so what 16 concurrent clients gain over one shows how little the server spends per token beyond the model.
Rounds of 1 and 16 clients alternate (medians over rounds), greedy and sampled, and the server's own CPU time per
generated token is read from /proc, which a busy machine disturbs less than wall time.
"""

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 64
LEVELS = ((1, 6), (4, 3), (16, 3))  # (concurrent clients, requests each)
THREADS = 1
SCALING_ROUNDS = 5
SCALING_LEVELS = ((1, 4), (16, 2))  # (concurrent clients, requests each) in every round
SAMPLED = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}


def make_model(folder: Path, preset: str = "small", **overrides):
    """A random-weight model of `preset` (fields of its config overridden by `overrides`) and a byte-level BPE
    tokenizer trained on Python's standard library sources, saved in `folder`; no EOS token, so that every request
    generates exactly the tokens it asks for."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    import openllm

    corpus = [p.read_text(errors="ignore") for p in sorted(Path(os.__file__).parent.glob("*.py"))[:60]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                        model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(0)
    # no eos_token_id in the model config: every request generates exactly NEW_TOKENS tokens
    config = openllm.get_preset_config(preset, **{"vocab_size": len(tokenizer), "eos_token_id": None, **overrides})
    model = openllm.OpenLLMForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def prompts(n: int) -> list[str]:
    words = "the server batches requests from many clients into one forward pass per generated token".split()
    return [" ".join(words[i % len(words):] + words[:i % len(words)])[: 40 + 3 * i] for i in range(n)]


def start_server(folder: Path):
    """`openllm serve` on the benchmark's settings, as a context manager yielding its URL and process id."""
    from openllm.serving.process import running_server

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OPENLLM_API_KEY", None)
    return running_server(folder, "--num-threads", str(THREADS), "--max-batch-size", "32", "--log-level", "warning",
                          env=env)


def load(url: str, clients: int, per_client: int, sampling: Optional[dict] = None) -> dict:

    texts = prompts(clients * per_client)
    latencies, tokens, errors = [], [], 0

    def client(index: int, http):
        nonlocal errors
        for j in range(per_client):
            body = {"inputs": texts[index * per_client + j],
                    "parameters": {"max_new_tokens": NEW_TOKENS, "details": True, **(sampling or {})}}
            started = time.perf_counter()
            response = http.post("/generate", json=body)
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            tokens.append(response.json()["details"]["generated_tokens"])

    wall = concurrently(url, clients, client)
    latencies.sort()
    return {"clients": clients, "requests": clients * per_client, "errors": errors, "tokens": sum(tokens),
            "tokens_per_s": sum(tokens) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]}


def concurrently(url: str, clients: int, work, timeout: float = 600) -> float:
    """Run `work(index, http)` for `clients` clients at once, each on its own connection; the wall time in seconds."""
    import httpx

    # clients exist before the clock starts: building one (its TLS context) takes ~20 ms of the benchmark's own
    # CPU, which 16 of them would bill to the server
    https = [httpx.Client(base_url=url, timeout=timeout) for _ in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        list(pool.map(work, range(clients), https))
        wall = time.perf_counter() - started
    for http in https:
        http.close()
    return wall


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_token_overhead(tmp: Path) -> dict:
    """Rounds of 1 and 16 concurrent clients, alternating, against a server of the 2-layer, 64-wide `tiny` preset:
    tokens/s and the server's CPU milliseconds per generated token, greedy and sampled (medians over rounds)."""
    folder = tmp / "tiny"
    make_model(folder, preset="tiny")
    results = {}
    with start_server(folder) as (url, pid):
        load(url, 2, 1)  # warm-up
        for name, sampling in (("greedy", None), ("sampled", SAMPLED)):
            rounds = {clients: [] for clients, _ in SCALING_LEVELS}
            for _ in range(SCALING_ROUNDS):
                for clients, per_client in SCALING_LEVELS:
                    before = process_cpu_seconds(pid)
                    r = load(url, clients, per_client, sampling)
                    cpu_ms = (process_cpu_seconds(pid) - before) * 1000 / max(r["tokens"], 1)
                    rounds[clients].append((r["tokens_per_s"], cpu_ms, r["errors"]))
            results[name] = {clients: {"tokens_per_s": statistics.median(t for t, _, _ in values),
                                       "cpu_ms_per_token": statistics.median(c for _, c, _ in values),
                                       "errors": sum(e for _, _, e in values)}
                             for clients, values in rounds.items()}
    return results


def batched_generate(model, tokenizer, n: int) -> float:
    """Tokens/s of one left-padded `generate` call on n prompts: the static-batching reference."""
    import torch

    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts(n), return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return (out.shape[1] - enc["input_ids"].shape[1]) * n / (time.perf_counter() - started)


def transformers_continuous_batching(model, tokenizer, n: int) -> float | None:
    """Tokens/s of transformers' own continuous batching (`generate_batch`, transformers 5) on the same prompts."""
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        return None
    ids = [tokenizer(text)["input_ids"] for text in prompts(n)]
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=ids, generation_config=config)
    return sum(len(o.generated_tokens) for o in outputs.values()) / (time.perf_counter() - started)


def engine_in_process(model, tokenizer, n: int) -> float:
    """Tokens/s of the serving engine on n prompts submitted at once, without HTTP: the same work as above."""
    import threading

    from openllm.serving.engine import Engine, SamplingParams, Sequence

    engine = Engine(model, tokenizer, max_batch_size=n).start()
    done = [threading.Event() for _ in range(n)]
    started = time.perf_counter()
    for text, event in zip(prompts(n), done):
        engine.submit(Sequence(tokenizer(text)["input_ids"], SamplingParams(max_new_tokens=NEW_TOKENS),
                               lambda out, e=event: e.set() if out.finish_reason else None))
    for event in done:
        event.wait()
    elapsed = time.perf_counter() - started
    engine.stop()
    return NEW_TOKENS * n / elapsed


def main(write_readme: bool = False):
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readme import machine_description, write_section

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "small"
        model, tokenizer = make_model(folder)
        with start_server(folder) as (url, _):
            load(url, 2, 1)  # warm-up
            results = [load(url, clients, per_client) for clients, per_client in LEVELS]
        threads = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        reference = batched_generate(model, tokenizer, 16)
        in_process = engine_in_process(model, tokenizer, 16)
        continuous = transformers_continuous_batching(model, tokenizer, 16)
        torch.set_num_threads(threads)
        n_params = sum(p.numel() for p in model.parameters())
        overhead = per_token_overhead(Path(tmp))
        load_average = os.getloadavg()[0]

    base = results[0]["tokens_per_s"]
    rows = ["| concurrent clients | requests | errors | tokens/s | speed-up | p50 latency (s) | p95 latency (s) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:.0f} | "
                    f"{r['tokens_per_s'] / base:.1f}x | {r['p50']:.2f} | {r['p95']:.2f} |")
    markdown = "\n".join([
        f"`openllm serve` load test ({machine_description()}; server on {THREADS} torch thread): `small` preset, "
        f"random weights, {n_params / 1e6:.1f}M parameters (vocabulary {len(tokenizer)}), {NEW_TOKENS} greedy "
        "tokens per request over `POST /generate` on loopback. Each client sends its requests one after another.",
        "",
        *rows,
        "",
        f"Reference, in one process without HTTP, the same 16 prompts: one static left-padded `model.generate` "
        f"batch {reference:.0f} tokens/s; the serving engine {in_process:.0f} tokens/s"
        + (f"; transformers' continuous batching (`generate_batch`) {continuous:.0f} tokens/s." if continuous
           else "."),
        "",
        f"Per-token overhead of the server: the `tiny` preset (2 layers, 64 wide, vocabulary {len(tokenizer)}), "
        f"{NEW_TOKENS} tokens per request, rounds of 1 client ({SCALING_LEVELS[0][1]} requests) and 16 clients "
        f"({SCALING_LEVELS[1][1]} requests each) alternating, medians of {SCALING_ROUNDS} rounds; sampled requests "
        f"use temperature 0.8 and top-p 0.95. Server CPU time per token is the server process's user + system time "
        f"over the tokens it generated (1-minute load average at the end: {load_average:.1f} on "
        f"{os.cpu_count()} cores).",
        "",
        "| requests | 1 client tokens/s | 16 clients tokens/s | 16 / 1 | server CPU ms/token, 1 client | "
        "16 clients | 1 / 16 |",
        "|---|---|---|---|---|---|---|",
        *[f"| {name} | {r[1]['tokens_per_s']:.0f} | {r[16]['tokens_per_s']:.0f} | "
          f"{r[16]['tokens_per_s'] / r[1]['tokens_per_s']:.1f}x | {r[1]['cpu_ms_per_token']:.2f} | "
          f"{r[16]['cpu_ms_per_token']:.2f} | {r[1]['cpu_ms_per_token'] / r[16]['cpu_ms_per_token']:.1f}x |"
          for name, r in overhead.items()],
    ])
    print(markdown)
    if write_readme:
        write_section("serve", markdown)
    return results


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
