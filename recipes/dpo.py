"""Direct Preference Optimization (DPO) with TRL's `DPOTrainer` on `prompt`/`chosen`/`rejected` pairs (strings or
conversations), full or LoRA. The reference model is TRL's: a frozen copy of the starting model, or, with LoRA, the
same model with its adapter switched off.

    accelerate launch recipes/dpo.py --config recipes/dpo_full.yaml
    # CPU, minutes, after recipes/sft_debug.yaml
    python recipes/dpo.py --config recipes/dpo_debug.yaml

training_summary.json records the preference accuracy and reward margin on the test pairs before and after
(`initial_eval_rewards/accuracies` → `eval_rewards/accuracies`, `eval_rewards/margins`).

The same run through the command line tool: `openllm dpo --config recipes/<config>.yaml [--key value ...]`. The steps
are in `openllm.training.dpo.main`.
"""

from openllm.training.dpo import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
