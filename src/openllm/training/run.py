"""The run layer every training stage shares (pretraining, SFT, reward, DPO, RLHF; merge writes its card here too).

- **Where a run stands** (`prepare_output_dir`, `resolve_checkpoint`): a finished `output_dir` is reported and left as
  it is; an interrupted one resumes from its newest *complete* checkpoint; `overwrite_output_dir` starts afresh. One
  run at a time trains into an `output_dir` (`lock_output_dir`); a second one is refused, not interleaved.
- **Crash-safe checkpoints** (`RunTrainerMixin`, mixed into every stage's Trainer by `with_run_layer`): each
  `checkpoint-N` is written into a hidden staging folder and renamed into place once every rank has finished writing
  it, and only then are old checkpoints rotated out. The checkpoint also carries what exact resume needs beyond
  transformers' own state (the loss accumulators, the metrics measured before training, expert load so far).
- **The final folder** (`save_final`): model, code, tokenizer, `training_summary.json`, evaluation and model card are
  staged and committed together (`openllm.atomic.commit_contents`), the summary last: it marks the run finished.
- **Memory reused across steps** (`openllm.training.allocator`): while a run trains on CPU, a step's freed memory
  stays in the process for the next step instead of being faulted in afresh.
- **One summary schema** (`training_summary`), one hardware/precision description, one expert-load log
  (`expert_load/*`), logging setup, and the Hub push deferred to the end (`defer_push`, `push`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import accelerate
import torch
import transformers
from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput

from .. import atomic
from ..data.tokenizer import portable_tokenizer_config, tokenizer_hash
from ..hub.model_card import write_model_card
from ..hub.push import push_folder
from .allocator import reuse_freed_memory
from .arguments import TRANSFORMERS_4

try:
    from transformers.trainer_utils import rotate_checkpoints
except ImportError:  # transformers 4.57 has it only as the method `Trainer._rotate_checkpoints`
    rotate_checkpoints = None

logger = logging.getLogger("openllm.training")

SUMMARY_FILE = "training_summary.json"
CHECKPOINT_STAGING = ".tmp-checkpoint"
FINAL_STAGING = ".tmp-final"
RUN_STATE = "run_state.json"
TRAINER_STATE = "trainer_state.json"
# hyperparameters recorded in training_summary.json, when the stage's arguments have them
SUMMARY_ARGS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "adam_beta1",
    "adam_beta2", "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "seed", "torch_compile", "gradient_checkpointing", "max_length", "packing", "assistant_only_loss",
    "completion_only_loss", "beta", "loss_type", "num_generations", "max_completion_length", "temperature",
    "center_rewards_coefficient",
)
SUMMARY_MODEL_ARGS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "load_in_4bit",
                      "load_in_8bit")


def setup(training_args) -> None:
    """Logging (openllm's INFO lines on the main process, warnings only on the others; transformers at the Trainer's
    level), a check that the launcher's request for FSDP is honoured, and the seed: what is built before the Trainer
    seeds itself (a fresh model, a reward model's new score head, LoRA weights) starts the same in every run."""
    transformers.set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("openllm").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    check_distributed()


def check_distributed() -> None:
    """accelerate shards with FSDP only on accelerators (CUDA, XPU, NPU...): on CPU processes an FSDP config silently
    becomes plain DDP over gloo. Refuse instead of training something other than what was asked for."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    kind = str(PartialState().distributed_type).split(".")[-1]
    if kind != "FSDP":
        raise ValueError(f"The launcher asked for FSDP, but accelerate {accelerate.__version__} set this run up as "
                         f"{kind}: it shards with FSDP only on GPUs (and other accelerators), not on CPU processes. "
                         "On CPUs launch with recipes/accelerate_configs/ddp.yaml (`--multi_gpu`, which runs DDP over "
                         "gloo) instead.")


def _is_main(training_args) -> bool:
    return training_args.process_index == 0


def _barrier() -> None:
    PartialState().wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------------------
# Where a run stands


def read_summary(output_dir) -> Optional[dict]:
    path = Path(output_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


_held_locks: dict[Path, object] = {}  # the open lock files of the runs this process is training


class OutputDirInUseError(OSError):
    """Another live process is training into the same output_dir."""


def lock_output_dir(output_dir) -> None:
    """Hold an exclusive lock on `output_dir` (a hidden `.<name>.lock` file beside it) until this process exits, or
    refuse when another live process holds it. The operating system drops the lock with its holder, even after a
    SIGKILL, so a killed run never leaves a stale lock behind."""
    try:
        import fcntl  # optional: POSIX only
    except ImportError:  # not POSIX: no advisory locks to take
        return
    output_dir = Path(output_dir).resolve()
    if output_dir in _held_locks:
        return
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir.parent / f".{output_dir.name}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutputDirInUseError(
            f"Another run (process {holder}) is training into {output_dir}. Wait for it to finish or stop it, then "
            "run this command again (it resumes from the newest checkpoint), or choose another output_dir.") from None
    except OSError as error:  # a filesystem without locks (some network mounts): train, unguarded
        handle.close()
        logger.warning("Could not lock %s (%s); make sure no other run trains into it at the same time.", output_dir,
                       error)
        return
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks[output_dir] = handle


def unlock_output_dir(output_dir) -> None:
    """Let other runs at `output_dir` again once this one is done (a notebook's kernel outlives its runs)."""
    handle = _held_locks.pop(Path(output_dir).resolve(), None)
    if handle is not None:
        handle.close()


# what a run writes into its output_dir while it trains; the finished folder lists the rest in the summary's "files"
RUN_ENTRIES = ("checkpoint-*", ".tmp-*", "runs", SUMMARY_FILE)


def foreign_entries(output_dir) -> list[str]:
    """The names in `output_dir` that no OpenLLM run wrote there."""
    ours = set((read_summary(output_dir) or {}).get("files", ()))
    return sorted(p.name for p in Path(output_dir).iterdir()
                  if p.name not in ours and not any(fnmatch.fnmatch(p.name, pattern) for pattern in RUN_ENTRIES))


def check_overwrite(output_dir, inputs=()) -> None:
    """Refuse `overwrite_output_dir` unless `output_dir` holds only what one of our runs wrote, and none of this
    run's `inputs` (the model to start from, the tokenizer, the data)."""
    folder = Path(output_dir).resolve()
    for given in filter(None, inputs):
        path = Path(given).expanduser()
        if path.exists() and (path.resolve() == folder or folder in path.resolve().parents):
            raise ValueError(f"overwrite_output_dir would delete {given}, which this run reads: it is (or is inside) "
                             f"the output_dir {output_dir}. Choose another --output_dir.")
    if folder.is_dir() and (foreign := foreign_entries(folder)):
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"overwrite_output_dir removes only a folder written by an OpenLLM run, and {output_dir} "
                         f"also holds {shown}. Move those elsewhere or choose another --output_dir.")


def prepare_output_dir(training_args, inputs=()) -> Optional[dict]:
    """Call before loading anything. Takes the output_dir's lock, completes a final folder whose commit a kill
    interrupted, clears `output_dir` when `overwrite_output_dir` is set (see `check_overwrite`; `inputs` are the
    paths this run reads), and returns the summary of a run that already finished there (None otherwise): the caller
    reports it with `report_finished` and stops, so rerunning a finished command changes nothing."""
    output_dir = Path(training_args.output_dir)
    if _is_main(training_args):
        lock_output_dir(output_dir)
        atomic.empty_trash(output_dir)
        if getattr(training_args, "overwrite_output_dir", False):
            check_overwrite(output_dir, inputs)
            if output_dir.exists():
                logger.info("overwrite_output_dir: removing %s to train from scratch", output_dir)
            atomic.remove_folder(output_dir)
        elif output_dir.is_dir():
            atomic.finish_contents(output_dir, last=SUMMARY_FILE)
            if read_summary(output_dir) is not None:
                remove_run_files(output_dir)  # left by a kill between the commit and their removal
    _barrier()
    if getattr(training_args, "overwrite_output_dir", False) or training_args.resume_from_checkpoint:
        return None  # an explicit checkpoint continues a run, finished or not
    summary = read_summary(output_dir)
    if summary is not None:
        unlock_output_dir(output_dir)
    return summary


def remove_run_files(output_dir) -> None:
    """Remove what a run keeps in hidden `.tmp-*` entries of its output_dir while it trains (staging folders, a
    tokenizer it trained), once the finished folder is committed."""
    for path in Path(output_dir).glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def finished(training_args, inputs=()) -> Optional[dict]:
    """`prepare_output_dir`, and when the run already finished, say so (main process) and return its summary."""
    summary = prepare_output_dir(training_args, inputs)
    if summary is not None and _is_main(training_args):
        report_finished(summary, training_args.output_dir)
    return summary


def report_finished(summary: dict, output_dir) -> None:
    """What a rerun of a finished command prints (main process)."""
    numbers = {k: v for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))}
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in numbers.items())
    steps = [e["step"] for e in summary.get("log_history") or [] if "step" in e]
    print(f"Run complete: {output_dir} already holds the finished {summary.get('stage', '')} run"
          f"{f' ({max(steps)} steps)' if steps else ''}.\n  Final metrics: {shown or 'none recorded'}\n"
          "  Nothing was changed. To train again, pass --overwrite_output_dir true or another --output_dir.")


def checkpoint_step(checkpoint) -> int:
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])


def complete_checkpoints(output_dir) -> list[Path]:
    """`checkpoint-N` folders of `output_dir` that are complete, oldest first; incomplete ones (left by another
    program, or a version without staged saves) are reported and skipped. Leftover staging folders are removed."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    staging = output_dir / CHECKPOINT_STAGING
    if staging.exists():
        logger.warning("Ignoring %s: a checkpoint save was interrupted there; removing it.", staging)
        shutil.rmtree(staging, ignore_errors=True)
    found = []
    for path in output_dir.glob("checkpoint-*"):
        if not (path.is_dir() and path.name.split("-", 1)[1].isdigit()):
            continue
        if (path / TRAINER_STATE).is_file():
            found.append(path)
        else:
            logger.warning("Ignoring %s: it is incomplete (no %s).", path, TRAINER_STATE)
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resolve_checkpoint(training_args) -> Optional[str]:
    """The checkpoint to resume from: `resume_from_checkpoint` when it names a folder; the newest complete one in
    `output_dir` when it is true/last, or unset with `auto_resume`."""
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() not in ("true", "last", "latest"):
        if not (Path(value) / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a complete checkpoint folder (no "
                                    f"{TRAINER_STATE}).")
        return value
    if value is None and not getattr(training_args, "auto_resume", True):
        return None
    checkpoints = complete_checkpoints(training_args.output_dir)
    if checkpoints:
        logger.info("Resuming from %s", checkpoints[-1])
        return str(checkpoints[-1])
    return None


def read_run_state(checkpoint) -> dict:
    """What `RunTrainerMixin` saved in `checkpoint` (empty for checkpoints of other programs). The same for every
    rank, so a run resumes on any number of processes."""
    if not checkpoint:
        return {}
    path = Path(checkpoint) / RUN_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def batch_identity(training_args) -> dict:
    """The number of processes and the examples per optimizer step over all of them."""
    return {"world_size": training_args.world_size,
            "global_batch_size": training_args.per_device_train_batch_size
            * training_args.gradient_accumulation_steps * training_args.world_size}


def short_hash(obj) -> str:
    """A short hash of a JSON-serialisable value, to tell a changed one from the same."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def data_identity(*, datasets, tokenizer, length: int, global_order: bool = False) -> dict:
    """What a checkpoint records about the data, so a resumed run sees the same samples in the same order: the data
    sources in order, the tokenizer, and the block (or maximum) length. The run layer adds the batch shape.

    `global_order`: the run's samples come in an order that depends only on the seed and the global batch, not on
    the number of processes, and nothing else random depends on the process (pretraining: a seeded sampler over a
    map-style dataset, each rank taking its share of every global batch). Such a run resumes exactly on another
    number of processes with the same global batch."""
    identity = {"datasets": [str(d) for d in datasets], "tokenizer": tokenizer_hash(tokenizer), "length": length}
    # transformers 4.57 was seen to resume such a run on another number of processes in another order: not there
    return {**identity, "global_order": True} if global_order and not TRANSFORMERS_4 else identity


def check_resume(checkpoint, saved: Optional[dict], now: dict, training_args) -> None:
    """Refuse to resume from `checkpoint` unless this run continues it exactly: a resumed run skips the samples
    already seen by position, and restores each process's random state from its own file, so a new number of
    processes, global batch, length, data source or tokenizer would silently train on other data, or in another
    order, than the uninterrupted run."""
    if not saved or training_args.ignore_data_skip:
        return
    changed = {k: (saved[k], now[k]) for k in saved.keys() & now.keys() if saved[k] != now[k]}
    if saved.get("global_order") and now.get("global_order") and "global_batch_size" not in changed:
        changed.pop("world_size", None)  # the same global batches, split over another number of processes
    if not changed:
        return
    lines = "; ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in sorted(changed.items()))
    same = ("the same global batch, per_device_train_batch_size × gradient_accumulation_steps × processes, on any "
            "number of processes" if saved.get("global_order") else "the same number of processes, "
            "per_device_train_batch_size and gradient_accumulation_steps")
    raise ValueError(
        f"Cannot resume {checkpoint} exactly: {lines} (checkpoint → this run). A resumed run skips the samples "
        "already seen by position, so it would train on other data than the run that wrote the checkpoint. Run with "
        f"the checkpoint's settings ({same}), or pass --ignore_data_skip true to continue from its weights with the "
        "data read from the start, or choose a new --output_dir to train afresh.")


def initial_metrics(trainer, checkpoint, measure: Callable[[], dict]) -> dict:
    """The held-out metrics before training: measured once (`measure()`), then carried by every checkpoint, so a
    resumed run reports the same `initial_*` numbers as one that never stopped."""
    initial = read_run_state(checkpoint).get("initial_metrics") if checkpoint else None
    if initial is None:
        initial = measure()
    trainer.run_state["initial_metrics"] = initial
    return initial


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer mixin


def _expert_load_source(model):
    """The module with `get_expert_load` inside PEFT/DDP wrappers, or None for dense models."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None)):
        while candidate is not None:
            if hasattr(type(candidate), "get_expert_load"):
                return candidate if getattr(candidate.config, "num_experts", 0) else None
            candidate = getattr(candidate, "model", None)
    return None


class RunTrainerMixin:
    """Mixed in front of a transformers/TRL Trainer (see `with_run_layer`): staged checkpoints, exact resume,
    expert-load logs, loss-free expert balancing, and no false alarm about tied weights on resume.

    `run_state` is saved with every checkpoint; stages put what they measured before training in
    `run_state["initial_metrics"]`."""

    log_expert_load = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_state = {"initial_metrics": {}, "expert_load_total": {}, "train_runtime": 0.0, "data": {}}
        self._staging_root = None
        self._resumed_state = {}
        self._pending_loss = None  # the loss accumulated since the last log before the checkpoint, to put back
        self._tr_loss_now = None  # the Trainer's running loss tensor (an attribute in transformers 5, a local in 4.57)
        trainer = self

        class RestoreAccumulators(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                trainer._restore_accumulators()

        class BalanceExperts(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # after each optimizer step, on every rank
                source = _expert_load_source(trainer.model)
                if source is not None and hasattr(source, "update_router_bias"):
                    source.update_router_bias()

        self.add_callback(RestoreAccumulators)
        self.add_callback(BalanceExperts)

    # -- training -----------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._run_started = time.perf_counter()
        self.run_state["data"] = {**self.run_state["data"], **batch_identity(self.args)}
        self._resumed_state = read_run_state(resume_from_checkpoint)
        if resume_from_checkpoint:
            check_resume(resume_from_checkpoint, self._resumed_state.get("data"), self.run_state["data"], self.args)
            self._restore_data_position()
        for key in ("initial_metrics", "expert_load_total", "train_runtime"):
            if key in self._resumed_state:
                self.run_state[key] = self._resumed_state[key]
        if resume_from_checkpoint and self._is_last_step(resume_from_checkpoint):
            return self._finish_from_checkpoint(resume_from_checkpoint)
        self._unmark_evaluation_prepare()
        eval_on_start = self.args.eval_on_start
        self.args.eval_on_start = eval_on_start and not resume_from_checkpoint  # it is in the resumed history
        try:
            # on accelerators a step's tensors live in the device's caching allocator already
            with reuse_freed_memory() if self.args.device.type == "cpu" else contextlib.nullcontext():
                output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.args.eval_on_start = eval_on_start
        output.metrics["train_runtime"] = self.run_state["train_runtime"] + output.metrics.get("train_runtime", 0.0)
        return output

    def _unmark_evaluation_prepare(self):
        """`evaluate()` before `train()` (the metrics measured before training) prepares the model for evaluation,
        which accelerate marks as prepared without wrapping it in DDP; `train()` then takes the mark at its word and
        trains every rank without gradient synchronisation. Clear the mark so that training wraps the model."""
        model = self.model
        if self.args.world_size > 1 and self.model_wrapped is model and getattr(model, "_is_accelerate_prepared", 0):
            del model._is_accelerate_prepared
            self.accelerator._models[:] = [m for m in self.accelerator._models if m is not model]

    def _is_last_step(self, checkpoint) -> bool:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
        planned = self.args.max_steps if self.args.max_steps > 0 else state.get("max_steps", math.inf)
        return state["global_step"] >= planned

    def _restore_accumulators(self):
        """Put the loss accumulated before the checkpoint back, so the logged losses and `train_loss` of a resumed
        run are those of an uninterrupted one."""
        state = self._resumed_state
        if "total_loss" in state:
            self._total_loss_scalar = state["total_loss"]
            self._pending_loss = state["pending_loss"]
            self._globalstep_last_logged = state["last_logged_step"]
            self._initial_global_step = 0  # transformers 5 divides train_loss by the steps since this one

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        # the one place both majors hand over the running loss tensor; it is updated in place, so adding to it here
        # counts the loss from before the checkpoint in the next logged loss
        if self._pending_loss is not None:
            tr_loss += self._pending_loss
            self._pending_loss = None
        self._tr_loss_now = tr_loss
        return super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)

    def _finish_from_checkpoint(self, checkpoint):
        """The checkpoint is the end of training (the run was killed after its last save): load it and skip
        `train`, which would otherwise run one step past the schedule's end."""
        logger.info("%s is the last step of the run: nothing left to train.", checkpoint)
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE))
        state = self._resumed_state
        train_loss = (state.get("total_loss", 0.0) + state.get("pending_loss", 0.0)) / max(self.state.global_step, 1)
        metrics = {"train_runtime": self.run_state["train_runtime"], "total_flos": self.state.total_flos,
                   "train_loss": train_loss}
        self.log(dict(metrics))
        return TrainOutput(self.state.global_step, train_loss, metrics)

    # -- staged checkpoints -------------------------------------------------------------------------------------------

    def _data_positions(self) -> Optional[list]:
        """Every rank's position in a stream that keeps one (`state_dict(rows)`): the rows it consumed so far."""
        if not hasattr(self.train_dataset, "load_state_dict"):
            return None
        rows = self.state.global_step * self.args.gradient_accumulation_steps * self.args.per_device_train_batch_size
        from accelerate.utils import gather_object

        return gather_object([self.train_dataset.state_dict(rows)])

    def _restore_data_position(self) -> None:
        """A stream resumes from its saved position instead of being read again from the start and skipped."""
        positions = self._resumed_state.get("data_positions")
        if positions is not None and hasattr(self.train_dataset, "load_state_dict"):
            self.train_dataset.load_state_dict(positions[self.args.process_index])
            self.args.ignore_data_skip = True  # the Trainer must not skip batches as well

    def _get_output_dir(self, trial):
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = os.path.join(run_dir, CHECKPOINT_STAGING)
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
            os.makedirs(staging_root)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        # every rank's running loss, averaged as the Trainer averages it when it logs: a resumed run logs the same
        # losses on any number of processes
        running = self._tr_loss_now
        pending = 0.0 if running is None else self.accelerator.gather(running.detach()).mean().item()
        positions = self._data_positions()
        self.accelerator.wait_for_everyone()  # every rank has written its part of the checkpoint
        if self.args.should_save:
            os.makedirs(staged, exist_ok=True)
            atomic.write_json(os.path.join(staged, RUN_STATE), {
                **self.run_state,
                "train_runtime": self.run_state["train_runtime"] + time.perf_counter() - self._run_started,
                "total_loss": self._total_loss_scalar, "pending_loss": pending,
                "last_logged_step": self._globalstep_last_logged,
                **({"data_positions": positions} if positions is not None else {}),
            })
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging_root):
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(staging_root, run_dir)
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE))
            atomic.fsync_tree(staged)
            atomic.replace_folder(staged, final)  # the commit: checkpoint-N exists only complete
            shutil.rmtree(staging_root, ignore_errors=True)
            if rotate_checkpoints is not None:
                rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                                   best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
            else:
                self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)
        self.accelerator.wait_for_everyone()

    def _load_optimizer_and_scheduler(self, checkpoint):
        # transformers 4.57 loads a distributed run's optimizer state onto `args.device`, which on CPU ranks is a
        # "cpu:N" that torch cannot load onto; the state belongs on the CPU anyway
        if not (TRANSFORMERS_4 and checkpoint and self.args.world_size > 1
                and self.args.device.type == "cpu" and not self.is_fsdp_enabled and not self.is_deepspeed_enabled):
            return super()._load_optimizer_and_scheduler(checkpoint)
        optimizer, scheduler = os.path.join(checkpoint, "optimizer.pt"), os.path.join(checkpoint, "scheduler.pt")
        if os.path.isfile(optimizer) and os.path.isfile(scheduler):
            self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))

    def _issue_warnings_after_load(self, load_result):
        """A tied head is not stored in checkpoints, so loading one reports it as missing; it is not."""
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        tied = set(getattr(model, "_tied_weights_keys", None) or ())
        if tied and getattr(config, "tie_word_embeddings", False):
            missing = [k for k in load_result.missing_keys if not any(k.endswith(t) for t in tied)]
            if len(missing) < len(load_result.missing_keys):
                model.tie_weights()
                load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)

    # -- expert load --------------------------------------------------------------------------------------------------

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.log_expert_load:
            logs.update(self._expert_load_logs())
        super().log(logs, *args, **kwargs)

    def _expert_load_logs(self) -> dict:
        """`expert_load/layer_i`: layer i's busiest expert's share of the routed tokens times the number of experts
        (1.0 = perfectly balanced, E = one expert takes everything), since the previous log; `expert_load/max`,
        `/min` (over all layers' experts) and `/cv` (mean over layers of the coefficient of variation)."""
        source = _expert_load_source(self.model)
        load = source.get_expert_load(reset=True) if source is not None else {}
        if not load:
            return {}
        scaled = {layer: frac.float().cpu() * frac.numel() for layer, frac in load.items()}
        logs = {f"expert_load/layer_{layer}": round(s.max().item(), 4) for layer, s in scaled.items()}
        logs["expert_load/max"] = max(logs.values())
        logs["expert_load/min"] = round(min(s.min().item() for s in scaled.values()), 4)
        logs["expert_load/cv"] = round(sum(s.std(unbiased=False).item() for s in scaled.values()) / len(scaled), 4)
        total = self.run_state["expert_load_total"]
        for layer, frac in load.items():
            previous = total.get(str(layer), [0.0] * frac.numel())
            total[str(layer)] = [a + float(b) for a, b in zip(previous, frac.float().cpu().tolist())]
        return logs

    def expert_load_summary(self) -> dict:
        """Each layer's share of routed tokens per expert over the whole run (logged steps)."""
        return {layer: [round(x / (sum(t) or 1), 4) for x in t]
                for layer, t in self.run_state["expert_load_total"].items()}


_CLASSES = {}


def with_run_layer(trainer_class):
    """`trainer_class` (Trainer, SFTTrainer, DPOTrainer, ...) with `RunTrainerMixin` in front."""
    if trainer_class not in _CLASSES:
        _CLASSES[trainer_class] = type(trainer_class.__name__, (RunTrainerMixin, trainer_class),
                                       {"__module__": __name__})
    return _CLASSES[trainer_class]


def train(trainer, checkpoint: Optional[str]):
    """`trainer.train`, resuming from `checkpoint` (from `resolve_checkpoint`)."""
    return trainer.train(resume_from_checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# Hardware, precision, summary


def precision_of(training_args) -> str:
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def describe_hardware(training_args=None) -> str:
    """`"{processes} × {device}, {precision}"`, e.g. "2 × NVIDIA H100 80GB HBM3, bf16 mixed precision"."""
    use_cpu = getattr(training_args, "use_cpu", False)
    if torch.cuda.is_available() and not use_cpu:
        device = torch.cuda.get_device_name()
    else:
        device = platform.processor() or platform.machine()
        with contextlib.suppress(OSError, StopIteration):
            with open("/proc/cpuinfo") as f:
                device = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        device = f"CPU {device} ({os.cpu_count()} cores)"
    world = training_args.world_size if training_args is not None else int(os.environ.get("WORLD_SIZE", "1"))
    precision = precision_of(training_args) if training_args is not None else "fp32"
    return f"{world} × {device}, " + {"fp32": "fp32"}.get(precision, f"{precision} mixed precision")


def numbers(metrics: dict) -> dict:
    """Finite numbers of a Trainer metrics dict, without timings and counters."""
    skip = ("runtime", "per_second", "preparation_time", "num_tokens", "total_flos")
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and not any(s in k for s in skip)}


def training_summary(trainer, stage: str, training_args, train_output, *, base_model, datasets, data: dict,
                     metrics: dict, model_args=None, extra_args: Optional[dict] = None, **extra) -> dict:
    """`training_summary.json`, the same schema for every stage: stage, base_model, datasets, data, training_args,
    log_history, metrics, hardware, train_runtime_s (plus stage-specific keys such as `adapter` or `reward`)."""
    args = {k: getattr(training_args, k) for k in SUMMARY_ARGS if hasattr(training_args, k)}
    if model_args is not None and getattr(model_args, "use_peft", False):
        args.update({k: getattr(model_args, k) for k in SUMMARY_MODEL_ARGS if getattr(model_args, k, None)})
    args.update(precision=precision_of(training_args), **batch_identity(training_args),
                distributed_type=str(trainer.accelerator.distributed_type).split(".")[-1])
    args.update(extra_args or {})
    runtime = train_output.metrics.get("train_runtime")
    summary = {
        "stage": stage,
        "base_model": base_model,
        "datasets": list(datasets),
        "data": data,
        "training_args": json.loads(json.dumps(args, default=str)),
        "log_history": trainer.state.log_history,
        "metrics": metrics,
        "hardware": describe_hardware(training_args),
        "train_runtime_s": round(float(runtime), 2) if runtime is not None else None,
        **extra,
    }
    return json.loads(json.dumps(summary, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# The final folder, the card, the Hub


def write_card(folder, name: Optional[str] = None) -> bool:
    """Render the model card (README.md) from what the folder records; `name` is the model's name when `folder` is
    a staging folder."""
    if not (Path(folder) / "config.json").is_file():  # a LoRA adapter: its card comes with `openllm merge`
        logger.info("No model card for the adapter in %s; `openllm merge` writes one with the merged model.", folder)
        return False
    try:
        write_model_card(folder, **({"model_name": name} if name else {}))
    except Exception as e:  # the trained model is already saved: report, don't lose the run over the card
        logger.error("Writing the model card for %s failed: %s", folder, e)
        return False
    return True


def save_final(trainer, training_args, summary: dict, extras: Optional[Callable[[Path], None]] = None) -> None:
    """Write the finished model folder as one unit: weights and code (`save_model`), tokenizer, `extras(folder)`
    (e.g. an evaluation), `training_summary.json` and the model card are staged in a hidden folder, then committed
    into `output_dir` with the summary last. Every process calls this (sharded models save from all ranks)."""
    output_dir = Path(training_args.output_dir)
    staging = output_dir / FINAL_STAGING
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if main:
        portable_tokenizer_config(staging)
        if extras is not None:
            extras(staging)
        atomic.write_json(staging / SUMMARY_FILE, summary)
        write_card(staging, name=output_dir.resolve().name)
        summary["files"] = sorted(p.name for p in staging.iterdir())  # what `overwrite_output_dir` may remove
        atomic.write_json(staging / SUMMARY_FILE, summary)
        atomic.commit_contents(staging, output_dir, last=SUMMARY_FILE)
        remove_run_files(output_dir)
        logger.info("Saved the model, tokenizer, %s and model card to %s", SUMMARY_FILE, output_dir)
        unlock_output_dir(output_dir)
    trainer.accelerator.wait_for_everyone()


def defer_push(training_args) -> bool:
    """Keep `Trainer` from creating the Hub repo up front (it fails offline, and would push checkpoints); returns
    whether to `push` the finished folder at the end."""
    wanted = bool(training_args.push_to_hub)
    training_args.push_to_hub = False
    return wanted


def push(training_args, stage: str) -> Optional[str]:
    """Push the finished `output_dir` (main process): checkpoints and logs stay local."""
    if not _is_main(training_args):
        return None
    return push_folder(training_args.output_dir, training_args.hub_model_id, private=training_args.hub_private_repo,
                       token=training_args.hub_token, commit_message=f"Upload OpenLLM model ({stage})")


__all__ = ["SUMMARY_FILE", "setup", "check_distributed", "OutputDirInUseError", "lock_output_dir", "unlock_output_dir",
           "prepare_output_dir", "finished", "report_finished", "read_summary", "complete_checkpoints",
           "resolve_checkpoint", "read_run_state", "RunTrainerMixin", "with_run_layer", "train", "precision_of",
           "describe_hardware", "numbers", "training_summary", "write_card", "save_final", "defer_push", "push"]
