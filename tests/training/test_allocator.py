"""A run's freed memory is reused by its next step instead of being faulted in afresh (glibc), and is handed back to
the OS when the run ends."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openllm.training.allocator import reuse_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

BLOCK = 128 * 2**20  # over glibc's largest adaptive mmap threshold (32 MiB) and any hole earlier tests left
PAGES = BLOCK // 4096
ROOT = Path(__file__).resolve().parents[2]


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_to_fill() -> int:
    before = page_faults()
    tensor = torch.ones(BLOCK // 4)  # fp32, touches every page
    del tensor
    return page_faults() - before


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def test_freed_memory_stays_in_the_process_inside_the_block_and_is_handed_back_after_it():
    faults_to_fill()
    assert faults_to_fill() > PAGES * 0.9  # glibc's default: every large block is a fresh mapping
    size_mib = 4 * BLOCK / 2**20

    with reuse_freed_memory() as reused:
        assert reused
        before = rss_mib()
        tensor = torch.ones(4 * BLOCK // 4)
        del tensor
        assert rss_mib() > before + 0.9 * size_mib  # freed, and kept for the next step
        with reuse_freed_memory() as nested:  # a nested block keeps the setting when it ends
            assert nested
        kept = rss_mib()
        assert kept > before + 0.9 * size_mib

    assert rss_mib() < kept - 0.9 * size_mib  # handed back when the block ends
    assert faults_to_fill() > PAGES * 0.9  # and glibc's defaults are back


# a fresh process per run: glibc's heap remembers what earlier tests in this one allocated and freed
FAULTS_PER_STEP = """
import json, resource, sys
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from openllm import OpenLLMForCausalLM, get_preset_config
from openllm.training.run import with_run_layer

class FaultsPerStep(TrainerCallback):
    counts = []
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.start)

torch.manual_seed(0)
ids = torch.randint(0, 32000, (96, 64))
data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
model = OpenLLMForCausalLM(get_preset_config("tiny", vocab_size=32000))
args = TrainingArguments(sys.argv[2], max_steps=6, per_device_train_batch_size=16, save_strategy="no", report_to=[],
                         disable_tqdm=True, use_cpu=True)
trainer_class = with_run_layer(Trainer) if sys.argv[1] == "run layer" else Trainer
trainer_class(model=model, args=args, train_dataset=data, callbacks=[FaultsPerStep()]).train()
print(json.dumps(FaultsPerStep.counts))
"""


def test_a_training_run_reuses_memory_from_step_to_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    faults = {}
    for name in ("transformers", "run layer"):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, name, str(tmp_path / name)], env=env,
                             capture_output=True, text=True, check=True).stdout
        faults[name] = min(json.loads(out.strip().splitlines()[-1])[1:])  # once the first steps have grown the heap
    # 16 × 64 tokens of 32k-vocabulary fp32 logits: 131 MB a step, like a small model's
    logits_pages = 16 * 64 * 32000 * 4 // 4096
    assert faults["transformers"] > logits_pages  # the logits and their gradient, faulted in every step
    assert faults["run layer"] < logits_pages / 20
