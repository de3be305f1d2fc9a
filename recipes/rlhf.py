"""RLHF with TRL's `GRPOTrainer`: sample `num_generations` completions per prompt, score them with a trained reward
model and/or programmatic rewards, and move the policy toward the better ones (group-relative advantages, KL to the
starting model when `beta > 0`).

    accelerate launch recipes/rlhf.py --config recipes/rlhf_grpo.yaml
    # CPU, minutes, after recipes/sft_debug.yaml and recipes/reward_debug.yaml
    python recipes/rlhf.py --config recipes/rlhf_debug.yaml

Rewards: `reward_model_name_or_path` (a folder from recipes/reward.py) and `reward_funcs`, names from
`openllm.training.rewards.REWARD_FUNCS` (accuracy, closeness, answer_format, brevity, digits); dataset columns such as
`answer` reach the functions as keyword arguments. training_summary.json records the mean reward of the first and
last logged steps (`initial_reward`, `final_reward`).

The same run through the command line tool: `openllm rlhf --config recipes/<config>.yaml [--key value ...]`. The steps
are in `openllm.training.rlhf.main`.
"""

from openllm.training.rlhf import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
