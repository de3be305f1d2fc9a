"""Programmatic rewards for RLHF (GRPO), chosen by name in a recipe's `reward_funcs`.

Each function follows TRL's reward-function protocol: `f(prompts, completions, **columns) -> list[float]`, where
`completions` are strings or chat messages and every other dataset column (e.g. `answer`) arrives as a keyword list.
"""

import re

from ..data.post_training import answer_of

_NUMBER = re.compile(r"-?\d+")


def accuracy(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion is exactly the reference `answer` column, else 0.0."""
    return [float(answer_of(c) == str(a).strip()) for c, a in zip(completions, answer)]


def closeness(completions, answer, **kwargs) -> list[float]:
    """For numeric answers: 1 / (1 + |prediction - answer|), 0.0 when the completion holds no number; a denser signal
    than `accuracy` while the policy is still far off."""
    rewards = []
    for c, a in zip(completions, answer):
        match, target = _NUMBER.search(answer_of(c)), _NUMBER.fullmatch(str(a).strip())
        rewards.append(1.0 / (1.0 + abs(int(match.group()) - int(target.group()))) if match and target else 0.0)
    return rewards


def answer_format(completions, **kwargs) -> list[float]:
    """Share of the completion's characters that are letters or digits: 1.0 for a bare answer such as `42` or `odd`,
    lower for chatter and stray symbols."""
    rewards = []
    for c in completions:
        text = answer_of(c)
        rewards.append(sum(ch.isalnum() for ch in text) / len(text) if text else 0.0)
    return rewards


def brevity(completions, **kwargs) -> list[float]:
    """1 / (1 + number of words beyond the first): answers here are one word."""
    return [1.0 / (1.0 + max(len(answer_of(c).split()) - 1, 0)) for c in completions]


def digits(completions, **kwargs) -> list[float]:
    """Share of the completion's characters that are digits: a checkable format reward that an untrained model can
    climb quickly (used by the tests to show that GRPO raises the reward)."""
    rewards = []
    for c in completions:
        text = answer_of(c)
        rewards.append(sum(ch.isdigit() for ch in text) / len(text) if text else 0.0)
    return rewards


REWARD_FUNCS = {
    "accuracy": accuracy,
    "closeness": closeness,
    "answer_format": answer_format,
    "brevity": brevity,
    "digits": digits,
}


def get_reward_funcs(names) -> list:
    """The reward functions named in `names`; an unknown name fails with the list of valid ones."""
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"Unknown reward function(s) {unknown}. Valid names: {', '.join(REWARD_FUNCS)}.")
    return [REWARD_FUNCS[n] for n in names]
