"""RLHF with TRL's `GRPOTrainer`: sample `num_generations` completions per prompt, score them with a trained reward
model and/or programmatic rewards, and move the policy toward the better ones (group-relative advantages, KL to the
starting model when `beta > 0`).

    openllm rlhf --config recipes/rlhf_debug.yaml        # = python recipes/rlhf.py --config recipes/rlhf_debug.yaml

Rewards: `reward_model_name_or_path` (a folder from the reward stage) and `reward_funcs`, names from
`openllm.training.rewards.REWARD_FUNCS`; dataset columns such as `answer` reach the functions as keyword arguments.
training_summary.json records the mean reward of the first and last logged steps (`initial_reward`, `final_reward`).
"""

from pathlib import Path

from trl import GRPOTrainer, ModelConfig, TrlParser

from ..models import loading
from . import run
from .arguments import GRPOConfig, RLHFArguments
from .posttrain import (
    load_model,
    load_stage_dataset,
    load_tokenizer,
    peft_config,
    require_chat_template,
    train_and_finish,
)
from .rewards import get_reward_funcs


def make_parser(**kwargs):
    return TrlParser((RLHFArguments, GRPOConfig, ModelConfig), **kwargs)


def main(script_args: RLHFArguments, training_args: GRPOConfig, model_args):
    run.setup(training_args)
    if run.finished(training_args, inputs=[model_args.model_name_or_path, script_args.tokenizer_name_or_path,
                                           script_args.dataset_name,
                                           script_args.reward_model_name_or_path]) is not None:
        return None

    # Rewards and data: checked before any model is loaded
    reward_funcs = get_reward_funcs(script_args.reward_funcs)
    if not reward_funcs and not script_args.reward_model_name_or_path:
        raise ValueError("No reward: set `reward_model_name_or_path` and/or `reward_funcs`.")
    train_dataset, eval_dataset, data_format = load_stage_dataset(script_args, "rlhf", seed=training_args.seed)

    # Policy and reward model
    tokenizer = load_tokenizer(script_args, model_args, training_args)
    require_chat_template(tokenizer, data_format, script_args.dataset_name)
    model = load_model(model_args, training_args)
    reward_processing_classes = [None] * len(reward_funcs)
    if script_args.reward_model_name_or_path:
        path = script_args.reward_model_name_or_path
        if (Path(path) / "adapter_config.json").exists():
            raise ValueError(f"{path} is a LoRA adapter; make a standalone reward model first: "
                             f"`openllm merge --adapter {path} --output-dir {path}-merged`.")
        reward_model = loading.load_model(path, head="sequence-classification", num_labels=1, device=None,
                                          trust_remote_code=training_args.trust_remote_code)
        reward_tokenizer = loading.load_tokenizer(path, trust_remote_code=training_args.trust_remote_code)
        reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
        reward_funcs = [reward_model, *reward_funcs]
        reward_processing_classes = [reward_tokenizer, *reward_processing_classes]
    push = run.defer_push(training_args)

    # Trainer, then train (resuming when interrupted) and save the finished folder
    trainer = run.with_run_layer(GRPOTrainer)(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        # GRPO evaluation samples completions: only when asked for (answer accuracy is measured either way)
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        reward_processing_classes=reward_processing_classes,
        peft_config=peft_config(model_args, model),
    )
    reward = {"model": script_args.reward_model_name_or_path or None, "functions": list(script_args.reward_funcs)}
    train_and_finish(trainer, "rlhf", script_args, training_args, model_args, eval_dataset=eval_dataset, push=push,
                     extra_metrics=reward_trajectory, reward=reward)
    return trainer


def reward_trajectory(trainer) -> dict:
    """Mean reward of the first and last logged training steps."""
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    return {"initial_reward": round(rewards[0], 6), "final_reward": round(rewards[-1], 6)} if rewards else {}
