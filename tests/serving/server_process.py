"""`openllm serve` as users run it, in its own process on 127.0.0.1, and what the tests ask of it."""

import os
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from openllm.serving.process import running_server

API_KEY = "test-key"
CONTEXT = 256  # the tiny preset's max_position_embeddings
SRC = Path(__file__).resolve().parents[2] / "src"


@contextmanager
def serve(folder: Path, *args: str, api_key: str = API_KEY):
    """Run `python -m openllm serve folder ...` until the block ends; yields the base URL."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OPENLLM_API_KEY": api_key}
    log_path = folder / f"server-{time.monotonic_ns()}.log"
    with running_server(folder, "--num-threads", "1", "--log-level", "warning", *args, env=env,
                        log_path=log_path) as server:
        yield server.url


def http(server, timeout=60) -> httpx.Client:
    return httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=timeout)


def greedy(server, prompt_ids: list[int], n: int) -> list[int]:
    """The reference: `model.generate` on the same weights, in this process."""
    out = server["model"].generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def model_logprobs(server, prompt_ids: list[int], generated: list[int]) -> list[float]:
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logprobs = server["model"](ids).logits[0].float().log_softmax(-1)
    return [float(logprobs[len(prompt_ids) + i - 1, t]) for i, t in enumerate(generated)]


def metric(server, name: str, **labels) -> float:
    text = http(server).get("/metrics").text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
