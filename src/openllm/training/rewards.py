"""Programmatic rewards for RLHF (GRPO), chosen by name in a recipe's `reward_funcs`.

Each function follows TRL's reward-function protocol: `f(prompts, completions, **columns) -> list[float]`, where
`completions` are strings or chat messages and every other dataset column (e.g. `answer`) arrives as a keyword list.
What a reward means for one completion is defined by its task (`openllm.tasks`); the functions here apply it to a
batch. Worked solutions end in a `#### <answer>` line: `accuracy`, `closeness` and `answer_digits` then read that
line, and `reasoning_format` checks the steps above it.
"""

from ..tasks import reasoning
from ..tasks.answer import ANSWER, numeric_closeness
from ..tasks.common import answer_of


def accuracy(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion (or its `####` answer line) is the reference `answer` column, numbers normalized."""
    return [ANSWER.reward({"answer": a}, c) for c, a in zip(completions, answer)]


def verified_accuracy(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 for the right `####` answer reached by steps that all hold and work on the question's own numbers, else
    0.0. Where answers cluster (small word problems: a handful of values cover most questions), plain `accuracy` pays
    a policy for always writing the commonest answer, and RL learns exactly that; this reward pays only for
    solving."""
    return [float(reasoning.is_verified(p, c, a)) for p, c, a in zip(prompts, completions, answer)]


def closeness(completions, answer, **kwargs) -> list[float]:
    """1 / (1 + |prediction - answer|) for numeric answers (see `openllm.tasks.answer.numeric_closeness`)."""
    return [numeric_closeness(c, a) for c, a in zip(completions, answer)]


def answer_digits(completions, answer, **kwargs) -> list[float]:
    """Share of the `####` answer's digits that match the reference (see `openllm.tasks.reasoning.answer_digits`)."""
    return [reasoning.answer_digits(c, a) for c, a in zip(completions, answer)]


def reasoning_format(completions, **kwargs) -> list[float]:
    """How well a worked solution is laid out, whatever its answer (see `openllm.tasks.reasoning.format_score`)."""
    return [reasoning.format_score(c) for c in completions]


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
    "verified_accuracy": verified_accuracy,
    "closeness": closeness,
    "answer_digits": answer_digits,
    "reasoning_format": reasoning_format,
    "answer_format": answer_format,
    "brevity": brevity,
    "digits": digits,
}


def get_reward_funcs(names) -> list:
    """The reward functions named in `names`; an unknown name fails with the list of valid ones."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"Unknown reward function(s) {unknown}. Valid names: {', '.join(REWARD_FUNCS)}.")
    return [REWARD_FUNCS[n] for n in names]
