"""Packed weights, prefix caching and speculative decoding in `openllm serve`, each against the same server without
it.

- Packed weights: the `small` preset (random weights) with its linear layers run from oneDNN-packed copies of their
  weights (the default on CPU) and with `--no-pack-weights`: batch-1 decoding (one client, requests one after another),
  16 concurrent clients, and time to first token of a 1,000-token prompt. Two servers answer alternately.

- Prefix caching: time to first token of requests that share a 1,000-token prefix (a long system prompt), each with
  its own question after it, on the `small` preset (random weights; the time does not depend on what they learned).
  Two servers, cache on and off, answer alternately; `max_tokens` is 1, so a request's time is its time to first
  token (tokenizing, prefill, one token, HTTP).
- Speculative decoding (prompt lookup): batch-1 greedy decoding on the quickstart model (trained: copying text it
  was shown needs a model that learned to copy). The repeating workload gives a passage and then starts it again,
  as an edit or a quote does; the other gives a passage and lets the model go on, where drafts mostly miss. Two
  servers, `--speculative-tokens 8` and off, answer alternately.

Medians over requests, ratios side by side; one torch thread per server.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_ROUNDS = 5
PACK_NEW_TOKENS = 64
PREFIX_TOKENS = 1000
PREFIX_REQUESTS = 12
SPEC_TOKENS = 8
SPEC_NEW_TOKENS = 96
SPEC_PASSAGES = 8
QUICKSTART = ROOT / "outputs" / "openllm-quickstart"


def start(folder: Path, *args: str):
    from openllm.serving.process import running_server

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OPENLLM_API_KEY", None)
    return running_server(folder, "--num-threads", "1", "--log-level", "warning", "--no-ui", *args, env=env)


def complete(http, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    response = http.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    return time.perf_counter() - started, response.json()["usage"]["completion_tokens"]


def alternate(urls: dict, prompts: list[str], max_tokens: int) -> dict:
    """Each prompt to every server in turn (the order swapped every prompt); seconds and tokens per server."""
    import httpx

    clients = {name: httpx.Client(base_url=url, timeout=600) for name, url in urls.items()}
    results = {name: [] for name in urls}
    for i, prompt in enumerate(prompts):
        names = list(urls) if i % 2 == 0 else list(urls)[::-1]
        for name in names:
            results[name].append(complete(clients[name], prompt, max_tokens))
    return results


def long_prefix(tokenizer) -> str:
    """About `PREFIX_TOKENS` tokens of Python source."""
    text = (Path(os.__file__).parent / "argparse.py").read_text()
    return tokenizer.decode(tokenizer(text)["input_ids"][:PREFIX_TOKENS])


def packed_weights(tmp: Path) -> dict:
    """Rounds alternating the two servers (order swapped every round): 4 requests from one client, 16 concurrent
    clients, and two 1,000-token prompts; medians over rounds of tokens/s and of time to first token."""
    import httpx
    from bench_serve import concurrently, make_model, prompts

    folder = tmp / "small"
    _, tokenizer = make_model(folder)
    texts, prefix = prompts(16), long_prefix(tokenizer)

    def stream_all(http, indices):
        for i in indices:
            complete(http, texts[i], PACK_NEW_TOKENS)

    results = {name: {"1 client": [], "16 clients": [], "ttft": []} for name in ("packed", "not packed")}
    with ExitStack() as stack:
        # no prefix cache: the long prompts share their first 1,000 tokens
        urls = {"packed": stack.enter_context(start(folder, "--prefix-cache-mb", "0")).url,
                "not packed": stack.enter_context(start(folder, "--prefix-cache-mb", "0", "--no-pack-weights")).url}
        clients = {name: httpx.Client(base_url=url, timeout=600) for name, url in urls.items()}
        for url in urls.values():  # warm-up
            concurrently(url, 16, lambda i, http: stream_all(http, [i]))
        for r in range(PACK_ROUNDS):
            for name in (list(urls) if r % 2 == 0 else list(urls)[::-1]):
                url = urls[name]
                wall = concurrently(url, 1, lambda i, http: stream_all(http, range(4)))
                results[name]["1 client"].append(4 * PACK_NEW_TOKENS / wall)
                wall = concurrently(url, 16, lambda i, http: stream_all(http, [i]))
                results[name]["16 clients"].append(16 * PACK_NEW_TOKENS / wall)
                results[name]["ttft"] += [complete(clients[name], f"{prefix}\n# Round {r}, prompt {k}:\n", 1)[0]
                                          for k in range(2)]
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}


def prefix_caching(tmp: Path) -> dict:
    from bench_serve import make_model

    folder = tmp / "small"
    _, tokenizer = make_model(folder)
    prefix = long_prefix(tokenizer)
    prompts = [f"{prefix}\n# Question {i}: what does the code above do with option {i}?\n"
               for i in range(PREFIX_REQUESTS + 1)]
    with ExitStack() as stack:
        urls = {"cached": stack.enter_context(start(folder)).url,
                "not cached": stack.enter_context(start(folder, "--prefix-cache-mb", "0")).url}
        alternate(urls, prompts[:1], 1)  # warm-up; fills the cache with the prefix
        results = alternate(urls, prompts[1:], 1)
    ttft = {name: statistics.median(s for s, _ in values) for name, values in results.items()}
    return {"prompt_tokens": len(tokenizer(prompts[1])["input_ids"]), **ttft}


def quickstart_model() -> Path:
    """The model `make quickstart` trains (trained here first when it is missing)."""
    if not (QUICKSTART / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "recipes" / "pretrain.py"), "--config",
                        str(ROOT / "recipes" / "pretrain_quickstart.yaml")], check=True, cwd=ROOT)
    return QUICKSTART


def passages(tokenizer, count: int, tokens: int = 120) -> list[str]:
    """Docstring-like passages of about `tokens` tokens from the standard library's sources."""
    out = []
    for path in sorted(Path(os.__file__).parent.glob("*.py"))[10:]:
        text = path.read_text(errors="ignore")
        start = text.find('"""')
        if start < 0:
            continue
        ids = tokenizer(text[start + 3:])["input_ids"][:tokens]
        if len(ids) == tokens:
            out.append(tokenizer.decode(ids))
        if len(out) == count:
            return out
    return out


def speculative() -> dict:
    from transformers import PreTrainedTokenizerFast

    folder = quickstart_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    texts = passages(tokenizer, SPEC_PASSAGES)
    workloads = {
        "repeats its context": [f"{p}\n\nThe same text again:\n\n{p[:len(p) // 4]}" for p in texts],
        "does not repeat": texts,
    }
    results = {}
    with ExitStack() as stack:
        urls = {"speculative": stack.enter_context(start(folder, "--speculative-tokens", str(SPEC_TOKENS))).url,
                "plain": stack.enter_context(start(folder)).url}
        alternate(urls, texts[:1], 8)  # warm-up
        for workload, prompts in workloads.items():
            runs = alternate(urls, prompts, SPEC_NEW_TOKENS)
            results[workload] = {name: statistics.median(n / s for s, n in values) for name, values in runs.items()}
    return results


def main(write_readme: bool = False):
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from readme import machine_description, write_section

    with tempfile.TemporaryDirectory() as tmp:
        packed = packed_weights(Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = prefix_caching(Path(tmp))
    spec = speculative()
    load_average = os.getloadavg()[0]
    markdown = "\n".join([
        f"Packed weights, prefix caching and speculative decoding ({machine_description()}; one torch thread per "
        f"server; 1-minute load average at the end {load_average:.1f} on {os.cpu_count()} cores).",
        "",
        f"Linear layers from oneDNN-packed weights (the default on CPU) against `--no-pack-weights` (`small` preset, "
        f"random weights; {PACK_NEW_TOKENS} greedy tokens per request; medians of {PACK_ROUNDS} rounds, servers "
        "alternating; time to first token of a 1,000-token prompt, `max_tokens` 1; prefix cache off in both):",
        "",
        "| weights | tokens/s, 1 client | tokens/s, 16 clients | time to first token, 1,000-token prompt (s) |",
        "|---|---|---|---|",
        *[f"| {name} | {r['1 client']:.0f} | {r['16 clients']:.0f} | {r['ttft']:.3f} |" for name, r in packed.items()],
        f"| packed / not packed | {packed['packed']['1 client'] / packed['not packed']['1 client']:.2f}x | "
        f"{packed['packed']['16 clients'] / packed['not packed']['16 clients']:.2f}x | "
        f"{packed['not packed']['ttft'] / packed['packed']['ttft']:.2f}x faster |",
        "",
        f"Time to first token with a shared {PREFIX_TOKENS:,}-token prefix (`small` preset, random weights, "
        f"{prefix['prompt_tokens']:,}-token prompts, a different question after the prefix each time; median of "
        f"{PREFIX_REQUESTS} requests per server, servers alternating):",
        "",
        "| prefix cache | time to first token (s) | speed-up |",
        "|---|---|---|",
        f"| off (`--prefix-cache-mb 0`) | {prefix['not cached']:.3f} | 1.0x |",
        f"| on (default) | {prefix['cached']:.3f} | {prefix['not cached'] / prefix['cached']:.1f}x |",
        "",
        f"Batch-1 greedy decoding, {SPEC_NEW_TOKENS} new tokens per request, the quickstart model (trained), "
        f"{SPEC_PASSAGES} passages of 120 tokens from the standard library's docstrings; median tokens/s per request, "
        "servers alternating:",
        "",
        f"| workload | plain (tokens/s) | `--speculative-tokens {SPEC_TOKENS}` (tokens/s) | speed-up |",
        "|---|---|---|---|",
        *[f"| {workload} | {r['plain']:.0f} | {r['speculative']:.0f} | {r['speculative'] / r['plain']:.2f}x |"
          for workload, r in spec.items()],
    ])
    print(markdown)
    if write_readme:
        write_section("decode", markdown)
    return packed, prefix, spec


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
