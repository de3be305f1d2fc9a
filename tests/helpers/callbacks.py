"""Trainer callbacks the training tests use to interrupt and observe runs."""

from transformers import TrainerCallback


class CrashAt(TrainerCallback):
    """Raise at the end of optimizer step `step`, as a crash in the middle of a run would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
