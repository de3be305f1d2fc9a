"""Programmatic rewards for RLHF (GRPO), chosen by name in a recipe's `reward_funcs`.

Each function follows TRL's reward-function protocol: `f(prompts, completions, **columns) -> list[float]`, where
`completions` are strings or chat messages and every other dataset column (e.g. `answer`) arrives as a keyword list.

Worked solutions (`openllm.data.reasoning`, GSM8K) end in a `#### <answer>` line: `accuracy`, `closeness` and
`answer_digits` then read that line, and `reasoning_format` checks the steps above it.
"""

import re

from ..data.post_training import answer_of
from ..data.reasoning import ANSWER_MARK, check_solution, final_answer, is_verified, normalize_answer

_NUMBER = re.compile(r"-?\d+")


def _answer(completion) -> str:
    """The `####` answer of a worked solution, else the whole completion."""
    text = answer_of(completion)
    return (final_answer(text) or "") if ANSWER_MARK in text else text


def accuracy(completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion (or its `####` answer line) is exactly the reference `answer` column, else 0.0."""
    return [float(normalize_answer(_answer(c)) == normalize_answer(str(a))) if _answer(c) else 0.0
            for c, a in zip(completions, answer)]


def verified_accuracy(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 for the right `####` answer reached by steps that all hold and work on the question's own numbers, else
    0.0. Where answers cluster (small word problems: a handful of values cover most questions), plain `accuracy` pays
    a policy for always writing the commonest answer, and RL learns exactly that; this reward pays only for
    solving."""
    return [float(is_verified(p, c, a)) for p, c, a in zip(prompts, completions, answer)]


def closeness(completions, answer, **kwargs) -> list[float]:
    """For numeric answers: 1 / (1 + |prediction - answer|), 0.0 when the completion (or its `####` line) holds no
    number; a denser signal than `accuracy` while the policy is still far off."""
    rewards = []
    for c, a in zip(completions, answer):
        match, target = _NUMBER.search(_answer(c)), _NUMBER.fullmatch(normalize_answer(str(a)))
        rewards.append(1.0 / (1.0 + abs(int(match.group()) - int(target.group()))) if match and target else 0.0)
    return rewards


def answer_digits(completions, answer, **kwargs) -> list[float]:
    """Share of digit positions, counted from the units, where the `####` answer matches the reference, over the
    longer of the two: 525 for 525 → 1.0, 515 → 0.67, 5250 → 0 (every digit shifted). Dense partial credit for
    column-by-column arithmetic, where one slip changes one digit. 0.0 without an answer line."""
    rewards = []
    for c, a in zip(completions, answer):
        predicted, target = final_answer(c), normalize_answer(str(a))
        if not predicted:
            rewards.append(0.0)
            continue
        same = sum(p == t for p, t in zip(reversed(predicted), reversed(target)))
        rewards.append(same / max(len(predicted), len(target)))
    return rewards


def reasoning_format(completions, **kwargs) -> list[float]:
    """How well a worked solution is laid out, whatever its answer: 0.5 × the share of step lines whose arithmetic
    holds (carries included), 0.25 for one `#### <answer>` line at the end, 0.25 when that answer is what the steps
    computed. 0.0 for a bare answer with no steps; 1.0 for a solution with no slip."""
    rewards = []
    for c in completions:
        check = check_solution(c)
        one_answer_line = check.answer_lines == 1 and check.answer is not None and not any(
            "not the last line" in p for p in check.problems)
        rewards.append(0.5 * check.step_score + 0.25 * one_answer_line + 0.25 * (check.follows and check.steps > 0))
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
