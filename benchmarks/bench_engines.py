"""`openllm serve` against the engines users would pick instead, on the same model and the same machine: vLLM's CPU
build (on the model converted with `openllm convert --to llama`) and llama.cpp through llama-cpp-python's server (on
the model's f32 GGUF export, `openllm export gguf --dtype f32`). All three compute in float32 on the same number of
CPU threads and are driven by one client over OpenAI's `POST /v1/completions`.

Two models, random weights (speed does not depend on what the weights learned) and bench_serve's byte-level BPE
tokenizer (vocabulary 8192), with no EOS token so that every request generates exactly `NEW_TOKENS` greedy tokens:
- the `small` preset (8 layers, 384 wide, 6 heads of 64): big enough that the matrix products matter;
- the `tiny` preset's shape (2 layers, 64 wide) with 2 heads of 32 instead of 4 of 16, because vLLM's CPU attention
  refuses head_dim 16; the weight matrices have the same shapes, so the same parameter count. Here the model costs
  almost nothing and each engine's own per-token overhead dominates.

Every request streams (`stream: true`, with `stream_options.include_usage`): time to first token is the time to the
first chunk carrying text, and the tokens counted are the final `usage.completion_tokens` (each response is checked to
have exactly `NEW_TOKENS`; vLLM is sent `ignore_eos: true`). Rounds alternate the engines, all three servers staying
up while one at a time generates; each round runs 1 client (requests one after another) and then 16 concurrent
clients; medians over rounds. Server CPU per token is the user + system time of the server's whole process tree (vLLM
runs its engine in a child process) from /proc, over the tokens generated, which a busy machine disturbs less than
wall time.

Each engine runs from its own environment and is skipped, with the `make` target that installs it, when missing:
    make install-vllm install-llamacpp
    .venv/bin/python benchmarks/run.py --only engines [--write-readme]
    .venv/bin/python benchmarks/bench_engines.py [--threads 1] [--rounds 5] [--write-readme]
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from bench_serve import NEW_TOKENS, concurrently, make_model, process_cpu_seconds, prompts  # noqa: E402

THREADS = 2  # the machine's cores; `--threads 1` for one
ROUNDS = 5
LEVELS = ((1, 4), (16, 1))  # (concurrent clients, requests each) in every round
MODEL_NAME = "bench"  # the name every server answers to
# (label, preset, config overrides, what the model is for)
MODELS = (
    ("small", "small", {}, "compute matters"),
    ("tiny, 2 heads of 32", "tiny", {"num_attention_heads": 2, "num_key_value_heads": 1},
     "overhead dominates; the `tiny` preset has 4 heads of 16, a head size vLLM's CPU attention refuses, so 2 heads "
     "of 32: the same weight shapes and parameter count"),
)
START_TIMEOUT_S = 1200  # vLLM compiles its model with torch inductor at start: minutes on a busy 2-core machine


@dataclass
class EngineSpec:
    key: str
    label: str
    python: Path  # the environment's interpreter
    modules: tuple[str, ...]  # what must import there
    make_target: str
    command: Callable[[Path, int, int], list[str]]  # (model artifact, port, threads) -> argv
    environment: Callable[[int], dict] = lambda threads: {}
    extra_body: dict = field(default_factory=dict)
    artifact: str = "folder"  # folder (OpenLLM), llama (Llama-format folder) or gguf

    def missing(self) -> Optional[str]:
        """Why this engine cannot run here, or None."""
        if not self.python.exists():
            return f"no {self.python.parent.parent.name} environment (`make {self.make_target}` installs it)"
        check = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))"
        if subprocess.run([str(self.python), "-c", check, *self.modules]).returncode:
            return (f"{', '.join(self.modules)} not importable in {self.python.parent.parent.name} "
                    f"(`make {self.make_target}` installs it)")
        return None


def _vllm_environment(threads: int) -> dict:
    # vLLM's CPU build would pin its OpenMP threads to cores; unpinned, like the other two engines' threads, its model
    # runs on OMP_NUM_THREADS threads (set for every engine). 1 GiB of KV cache is plenty for 16 short requests.
    return {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_LOGGING_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1"}


ENGINES = (
    EngineSpec(
        "openllm", "`openllm serve`", Path(sys.executable), ("openllm", "fastapi"), "install",
        lambda model, port, threads: [
            "-m", "openllm", "serve", str(model), "--port", str(port), "--num-threads", str(threads),
            "--served-model-name", MODEL_NAME, "--max-batch-size", "32", "--log-level", "warning", "--no-ui"],
    ),
    EngineSpec(
        "vllm", "vLLM (CPU build)", ROOT / ".venv-vllm" / "bin" / "python", ("vllm",), "install-vllm",
        # `vllm serve` fails in the vllm-cpu distribution (its metadata is named vllm-cpu); the module works
        lambda model, port, threads: [
            "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--dtype", "float32",
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL_NAME],
        _vllm_environment, {"ignore_eos": True}, "llama",
    ),
    EngineSpec(
        "llama.cpp", "llama.cpp (llama-cpp-python server)", ROOT / ".venv-llamacpp" / "bin" / "python",
        ("llama_cpp", "uvicorn", "fastapi", "sse_starlette"), "install-llamacpp",
        # f32 keys and values (type 0), as the other two keep them (llama.cpp's default is f16). By default the
        # server cuts a streaming answer short as soon as another request waits (`interrupt_requests`): off, so that
        # every request is answered in full. Quiet, as the other two are made (its default prints timings per request)
        lambda model, port, threads: [
            "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME, "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--type_k", "0", "--type_v", "0", "--interrupt_requests", "false", "--verbose", "false"],
        artifact="gguf",
    ),
)


# ------------------------------------------------------------------------------------------------ processes
def free_port() -> int:
    from openllm.serving.process import free_port as _free_port

    return _free_port()


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += process_cpu_seconds(p)
        except (OSError, IndexError):  # ended meanwhile
            pass
    return total


def tree_rss_mib(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass
class Server:
    spec: EngineSpec
    url: str
    pid: int
    start_s: float
    log: Path


@contextmanager
def running(spec: EngineSpec, artifact: Path, threads: int, log: Path):
    """The engine's OpenAI server on a free port until the block ends; ready once `/v1/models` answers."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), **spec.environment(threads)}
    env.pop("OPENLLM_API_KEY", None)
    started = time.monotonic()
    with open(log, "w") as out:
        # a session of its own: vLLM's engine process and its helpers end with the server
        process = subprocess.Popen([str(spec.python), *spec.command(artifact, port, threads)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{spec.label} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError(f"{spec.label} did not start within {START_TIMEOUT_S} s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(1)
        yield Server(spec, url, process.pid, time.monotonic() - started, log)
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)  # the group this function created
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


# ------------------------------------------------------------------------------------------------ client
def stream_completion(http, prompt: str, extra_body: dict) -> dict:
    """One streamed greedy completion: time to the first chunk with text, the total time, and the completion tokens:
    `usage.completion_tokens` where the server sends usage (llama-cpp-python's server does not: there, finish reason
    `length` means `max_tokens` tokens, and anything else is counted by its text chunks and reported)."""
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **extra_body}
    started = time.perf_counter()
    first = tokens = finish = None
    chunks = 0
    with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"error": f"{response.status_code} {response.text[:300]}"}
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return {"error": str(chunk["error"])[:300]}
            choice = chunk["choices"][0] if chunk.get("choices") else {}
            if choice.get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - started
            finish = choice.get("finish_reason") or finish
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    usage = tokens is not None
    if tokens is None:
        tokens = NEW_TOKENS if finish == "length" else chunks
    return {"ttft": first, "seconds": time.perf_counter() - started, "tokens": tokens, "usage": usage,
            "finish": finish}


def load(url: str, clients: int, per_client: int, extra_body: dict) -> dict:
    """`clients` concurrent clients, each streaming `per_client` requests one after another."""
    import httpx

    texts = prompts(clients * per_client)
    results: list[dict] = []

    def client(index: int, http):
        for j in range(per_client):
            try:
                results.append(stream_completion(http, texts[index * per_client + j], extra_body))
            except httpx.HTTPError as e:
                results.append({"error": repr(e)})

    wall = concurrently(url, clients, client)
    ok = [r for r in results if "error" not in r]
    tokens = sum(r["tokens"] for r in ok)
    return {"wall": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft": [r["ttft"] for r in ok if r["ttft"] is not None],
            "errors": [r["error"] for r in results if "error" in r],
            "no_usage": sum(not r["usage"] for r in ok),
            "wrong_count": sum(r["tokens"] != NEW_TOKENS or r["finish"] != "length" for r in ok)}


# ------------------------------------------------------------------------------------------------ the benchmark
def prepare(spec: EngineSpec, folder: Path, work: Path) -> Path:
    """The model in the form the engine reads, written with openllm's own converters."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if spec.artifact == "folder":
        return folder
    if spec.artifact == "llama":
        out = work / f"{folder.name}-llama"
        command = ["convert", str(folder), str(out), "--to", "llama"]
    else:
        out = work / f"{folder.name}.gguf"
        command = ["export", "gguf", str(folder), str(out), "--dtype", "f32"]
    run = subprocess.run([sys.executable, "-m", "openllm", *command], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"openllm {' '.join(command[:2])} failed:\n{run.stderr[-3000:]}")
    return out


def bench_model(specs: list[EngineSpec], folder: Path, work: Path, threads: int, rounds: int,
                loads: list[float]) -> dict:
    """Medians over `rounds` alternating rounds of every engine at each level, for one model."""
    samples = {s.key: {c: [] for c, _ in LEVELS} for s in specs}
    checks = {s.key: {"errors": [], "no_usage": 0, "wrong_count": 0, "requests": 0} for s in specs}
    idle = {s.key: [0.0, 0.0] for s in specs}  # CPU seconds a server used while another engine generated, wall
    with ExitStack() as stack:
        servers = {}
        for spec in specs:  # one at a time: a start-up (vLLM's compilation) must not share the CPUs with another
            artifact = prepare(spec, folder, work)
            server = stack.enter_context(running(spec, artifact, threads, work / f"{folder.name}-{spec.key}.log"))
            for clients, _ in LEVELS:  # warm-up: first requests, and vLLM's first batch shapes
                load(server.url, clients, 1, spec.extra_body)
            servers[spec.key] = server
        for r in range(rounds):
            order = specs[r % len(specs):] + specs[:r % len(specs)]
            for spec in order:
                server = servers[spec.key]
                loads.append(os.getloadavg()[0])
                for clients, per_client in LEVELS:
                    before = {k: tree_cpu_seconds(s.pid) for k, s in servers.items()}
                    result = load(server.url, clients, per_client, spec.extra_body)
                    used = {k: tree_cpu_seconds(s.pid) - before[k] for k, s in servers.items()}
                    ttft = statistics.median(result["ttft"]) if result["ttft"] else float("nan")
                    samples[spec.key][clients].append(
                        (result["tokens_per_s"], ttft, used[spec.key] * 1000 / max(result["tokens"], 1)))
                    check = checks[spec.key]
                    check["errors"] += result["errors"]
                    check["no_usage"] += result["no_usage"]
                    check["wrong_count"] += result["wrong_count"]
                    check["requests"] += clients * per_client
                    for key in servers:
                        if key != spec.key:
                            idle[key][0] += used[key]
                            idle[key][1] += result["wall"]
        rss = {k: tree_rss_mib(s.pid) for k, s in servers.items()}
        start = {k: s.start_s for k, s in servers.items()}
    out = {}
    for spec in specs:
        levels = {}
        for clients, values in samples[spec.key].items():
            levels[clients] = {"tokens_per_s": statistics.median(v[0] for v in values),
                               "ttft_ms": 1000 * statistics.median(v[1] for v in values),
                               "cpu_ms_per_token": statistics.median(v[2] for v in values)}
        out[spec.key] = {"levels": levels, "checks": checks[spec.key], "rss_mib": rss[spec.key],
                         "start_s": start[spec.key],
                         "idle_cpu_share": idle[spec.key][0] / idle[spec.key][1] if idle[spec.key][1] else 0.0}
    return out


def version_of(python: Path, code: str) -> str:
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else "?"


def versions(specs: list[EngineSpec]) -> dict:
    found = {}
    for spec in specs:
        if spec.key == "openllm":
            found[spec.key] = version_of(spec.python, "import importlib.metadata as m; print(m.version('openllm-hf'))")
        elif spec.key == "vllm":
            found[spec.key] = version_of(spec.python, "import vllm; print(vllm.__version__)")
        else:
            found[spec.key] = version_of(spec.python, "import llama_cpp; print(llama_cpp.__version__)")
    return found


def table(results: dict, specs: list[EngineSpec]) -> list[str]:
    base = results.get("llama.cpp")
    rows = ["| engine | tokens/s, 1 client | vs llama.cpp | tokens/s, 16 clients | vs llama.cpp | "
            "time to first token, 1 client (ms) | time to first token, 16 clients (ms) | server CPU ms/token, "
            "1 client | server CPU ms/token, 16 clients | resident memory (MiB) | start-up (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        r = results[spec.key]
        one, many = r["levels"][1], r["levels"][16]
        ratio = {c: f"{r['levels'][c]['tokens_per_s'] / base['levels'][c]['tokens_per_s']:.2f}x" if base else "–"
                 for c in (1, 16)}
        rows.append(f"| {spec.label} | {one['tokens_per_s']:.0f} | {ratio[1]} | {many['tokens_per_s']:.0f} | "
                    f"{ratio[16]} | {one['ttft_ms']:.0f} | {many['ttft_ms']:.0f} | {one['cpu_ms_per_token']:.2f} | "
                    f"{many['cpu_ms_per_token']:.2f} | {r['rss_mib']:.0f} | {r['start_s']:.0f} |")
    return rows


def checks_line(results: dict, specs: list[EngineSpec]) -> str:
    parts = []
    for spec in specs:
        c = results[spec.key]["checks"]
        ok = c["requests"] - len(c["errors"])
        text = f"{spec.label}: {ok}/{c['requests']} requests answered"
        text += ", every one with" if not c["wrong_count"] else f", {c['wrong_count']} without"
        text += f" {NEW_TOKENS} completion tokens and finish reason `length`"
        if c["no_usage"] == ok:
            text += " (no usage reported in streams: finish reason `length` taken as the count)"
        elif c["no_usage"]:
            text += f" ({c['no_usage']} streams reported no usage)"
        if c["errors"]:
            text += f" (first error: {c['errors'][0]})"
        parts.append(text)
    return "; ".join(parts) + "."


# What each engine offers: each cell checked in the engine's code or documentation (openllm's src/openllm/serving;
# vLLM 0.32's package: its routes, `SpeculativeMethod`, `StructuredOutputsParams`, `QuantizationMethods`,
# `PlatformEnum`; llama-cpp-python 0.3's package: server/app.py's request lock and routes, server/settings.py, its
# README; llama.cpp's server README for `llama-server`).
OFFERS = (
    ("", "`openllm serve`", "vLLM", "llama.cpp through llama-cpp-python's server"),
    ("model format", "transformers folders (`AutoModelForCausalLM`)",
     "transformers folders (native architectures, others through its transformers backend)", "GGUF"),
    ("continuous batching", "yes: requests join and leave the running batch at every step", "yes",
     "no: one request at a time, behind a lock (llama.cpp's own C++ `llama-server` batches, with `--parallel` "
     "slots)"),
    ("OpenAI API", "`/v1/completions`, `/v1/chat/completions`, `/v1/models`",
     "`/v1/completions`, `/v1/chat/completions`, `/v1/responses`, `/v1/embeddings`, `/v1/models`, and more",
     "`/v1/completions`, `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`"),
    ("TGI API (`/generate`, `/generate_stream`)", "yes", "no", "no"),
    ("structured output", "JSON schema and JSON object (OpenAI `response_format`), JSON schema and regex (TGI "
     "`grammar`), with llguidance",
     "JSON schema, JSON object, regex, choice, grammar (backends xgrammar, guidance, outlines, lm-format-enforcer)",
     "GBNF grammar; JSON object, optionally with a schema (chat `response_format`)"),
    ("prefix caching", "yes, on by default (`--prefix-cache-mb`)", "yes, on by default (`--enable-prefix-caching`)",
     "the previous request's matching prefix is kept; an optional RAM or disk prompt cache (`--cache`)"),
    ("speculative decoding", "prompt lookup for a lone greedy request (`--speculative-tokens`)",
     "n-gram, draft model, EAGLE, Medusa, MTP, suffix... (`--speculative-config`)",
     "prompt lookup (`--draft_model prompt-lookup-decoding`)"),
    ("quantization", "none when serving (float32, bfloat16, float16); quantized exports: GGUF q8_0, ONNX int8",
     "GPTQ, AWQ, FP8, MXFP4, compressed-tensors, torchao, ModelOpt, Quark...",
     "the GGUF types (q2_k … q8_0), and a quantized KV cache (`--type_k`, `--type_v`)"),
    ("GPU", "through PyTorch (`--device cuda`, `mps`)", "CUDA, ROCm, TPU, Intel XPU (and this CPU build)",
     "CUDA, Metal, ROCm, Vulkan, SYCL builds (`--n_gpu_layers`)"),
)


def offers_table() -> str:
    header, *rows = OFFERS
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(write_readme: bool = False, threads: int = THREADS, rounds: int = ROUNDS):
    from readme import machine_description, write_section

    specs, skipped = [], []
    for spec in ENGINES:
        reason = spec.missing()
        if reason:
            print(f"bench_engines: skipping {spec.label}: {reason}", flush=True)
            skipped.append(f"{spec.label} ({reason})")
        else:
            specs.append(spec)
    if len(specs) < 2:
        print("bench_engines: nothing to compare `openllm serve` with; install an engine first "
              "(make install-vllm, make install-llamacpp)")
        return None
    found_versions = versions(specs)
    loads = [os.getloadavg()[0]]
    results, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, preset, overrides, _ in MODELS:
            folder = Path(tmp) / preset
            model, tokenizer = make_model(folder, preset, **overrides)
            sizes[label] = (sum(p.numel() for p in model.parameters()), len(tokenizer), model.config)
            del model
            print(f"bench_engines: {label}: {', '.join(s.label for s in specs)}, {rounds} rounds", flush=True)
            results[label] = bench_model(specs, folder, Path(tmp), threads, rounds, loads)
    loads.append(os.getloadavg()[0])

    engines_line = "; ".join(f"{s.label} {found_versions[s.key]}" for s in specs)
    lines = [
        f"Engines compared ({machine_description()}; {threads} CPU thread{'s' if threads > 1 else ''} for every "
        f"engine): {engines_line}. Same model, same prompts, same client: {NEW_TOKENS} greedy tokens per request "
        "streamed from OpenAI's `/v1/completions` on loopback, float32 everywhere (vLLM on the folder from "
        "`openllm convert --to llama`, llama.cpp on the f32 GGUF from `openllm export gguf` with an f32 KV cache), "
        "each engine on its default settings otherwise (vLLM compiles its model with torch inductor at start; "
        "prefix caching is on in `openllm serve` and vLLM), except that no engine pins its threads to cores and "
        "llama-cpp-python's server does not cut a streamed answer short when another request arrives "
        "(`--interrupt_requests false`). All servers stay up; rounds alternate the engines, one "
        f"generating at a time; each round is 1 client sending {LEVELS[0][1]} requests one after another, then "
        f"{LEVELS[1][0]} concurrent clients sending {LEVELS[1][1]} each; medians of {rounds} rounds. Time to first "
        "token: the first streamed chunk with text (median over a round's requests, then over rounds). Server "
        "CPU: user + system time of the server's process tree over the tokens generated. Resident memory: the "
        "process tree's at the end (vLLM's includes its 1 GiB KV cache). Start-up: until `/v1/models` answers "
        "(vLLM's includes its compilation, from torch's compile cache when an earlier run left it).",
        "",
    ]
    for label, _, _, purpose in MODELS:
        n_params, vocab, config = sizes[label]
        lines += [f"**{label}** ({purpose}): {config.num_hidden_layers} layers, {config.hidden_size} wide, "
                  f"{config.num_attention_heads} heads of {config.head_dim} ({config.num_key_value_heads} key/value), "
                  f"vocabulary {vocab}, {n_params / 1e6:.1f}M parameters.", "",
                  *table(results[label], specs), "",
                  f"Checks: {checks_line(results[label], specs)}", ""]
    idle = {s.key: max(results[label][s.key]["idle_cpu_share"] for label, *_ in MODELS) for s in specs}
    lines += [
        f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} (median "
        f"{statistics.median(loads):.1f}) on {os.cpu_count()} cores, this benchmark's server and client included; "
        "the machine was shared. Idle servers while another engine generated used at most "
        + ", ".join(f"{100 * idle[s.key]:.1f}%" + f" of a core ({s.label})" for s in specs) + ".",
    ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    lines += ["", "What each engine offers (from each engine's code and documentation):", "", offers_table()]
    markdown = "\n".join(lines)
    print(markdown)
    if write_readme:
        write_section("engines", markdown)
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    main(write_readme=args.write_readme, threads=args.threads, rounds=args.rounds)
