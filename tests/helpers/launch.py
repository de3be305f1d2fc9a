"""`openllm ARGV` in a subprocess, through the fault injector (`helpers/faults.py`), on one process or on several
DDP ranks over gloo (`accelerate launch`)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "helpers" / "faults.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
       "HF_HUB_OFFLINE": "1"}


def accelerate_launch(processes: int, port: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(port)]


def openllm(fault: str, *argv, processes: int = 1, port: int = 29541) -> subprocess.CompletedProcess:
    """`openllm ARGV`, killed as `fault` says ("none", "step:3", ...; see faults.py)."""
    launch = accelerate_launch(processes, port) if processes > 1 else [sys.executable]
    env = {k: v for k, v in ENV.items() if k != "OPENLLM_DEBUG"}
    return subprocess.run([*launch, str(FAULTS), fault, *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=400)
