"""Reward model training with TRL's `RewardTrainer` on preference pairs (`chosen`/`rejected`, optional `prompt`).

The model is an `OpenLLMForSequenceClassification` with one label: its decoder starts from a causal-LM checkpoint
(the `lm_head` is dropped) and a new `score` head reads the last token. Any other causal LM works the same way
through `AutoModelForSequenceClassification`.

    accelerate launch recipes/reward.py --config recipes/reward_full.yaml
    # CPU, minutes, after recipes/sft_debug.yaml
    python recipes/reward.py --config recipes/reward_debug.yaml

training_summary.json records the pairwise accuracy (`eval_accuracy`: the share of held-out pairs where chosen
scores above rejected) and margin before and after training. The folder is what `recipes/rlhf.py` takes as
`reward_model_name_or_path`.

The same run through the command line tool: `openllm reward --config recipes/<config>.yaml [--key value ...]`.
The steps are in `openllm.training.reward.main`.
"""

from openllm.training.reward import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
