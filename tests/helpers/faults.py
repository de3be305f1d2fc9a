"""Run `openllm <command> ...` in this process and SIGKILL it at a chosen instant (the fault-injection tests):

    python tests/helpers/faults.py step:5  pretrain --config run.yaml   # right after optimizer step 5
    python tests/helpers/faults.py save:4  sft --config run.yaml        # inside the save of checkpoint-4: weights and
                                                                        # optimizer written, RNG and trainer state not
    python tests/helpers/faults.py staged  ...                          # the finished folder staged, not committed
    python tests/helpers/faults.py commit  ...                          # the finished folder half moved into place
    python tests/helpers/faults.py none    ...                          # no kill
"""

import os
import signal
import sys


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind == "step":
        from transformers.trainer_callback import CallbackHandler

        on_step_end = CallbackHandler.on_step_end

        def killing_on_step_end(self, args, state, control):
            control = on_step_end(self, args, state, control)
            if state.global_step == int(arg):
                die()
            return control

        CallbackHandler.on_step_end = killing_on_step_end
    elif kind == "save":
        from transformers import Trainer

        save_rng_state = Trainer._save_rng_state

        def killing_save_rng_state(self, output_dir):
            if self.state.global_step == int(arg):
                die()
            return save_rng_state(self, output_dir)

        Trainer._save_rng_state = killing_save_rng_state
    elif kind == "staged":
        from openllm import atomic

        atomic.commit_contents = lambda *args, **kwargs: die()
    elif kind == "commit":
        from openllm import atomic

        move_entry, moved = atomic._move_entry, []

        def killing_move_entry(src, dst):
            move_entry(src, dst)
            moved.append(dst)
            if len(moved) == 2:
                die()

        atomic._move_entry = killing_move_entry
    elif kind != "none":
        raise SystemExit(f"unknown fault {spec!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from openllm_cli import main

    sys.exit(main(sys.argv[2:]))
