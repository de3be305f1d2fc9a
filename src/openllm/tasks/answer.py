"""Any data with an `answer` column (GSM8K from the Hub, your own JSONL, the synthetic tasks): a completion is right
when it states that answer, as a bare answer or as a worked solution's `####` line. This is what the post-training
stages measure as answer accuracy, whatever task the rows come from.
"""

import re

from .common import Task, answer_of
from .reasoning import ANSWER_MARK, final_answer, final_answer_is, normalize_answer

_INTEGER = re.compile(r"-?\d+")


def stated_answer(completion) -> str:
    """The `####` answer of a worked solution, else the whole completion."""
    text = answer_of(completion)
    return (final_answer(text) or "") if ANSWER_MARK in text else text


def answer_matches(completion, answer) -> bool:
    """A worked solution's `####` answer equals `answer` (normalized), or the bare completion is `answer`."""
    if ANSWER_MARK in answer_of(completion):
        return final_answer_is(completion, answer)
    return answer_of(completion) == str(answer).strip()


def normalized_match(completion, answer) -> bool:
    """Like `answer_matches`, and also lenient about how a bare number is written (`1,000`, `$5`, `7.0`)."""
    stated = stated_answer(completion)
    return bool(stated) and normalize_answer(stated) == normalize_answer(str(answer))


def numeric_closeness(completion, answer) -> float:
    """For numeric answers: 1 / (1 + |prediction - answer|), 0.0 when the completion (or its `####` line) holds no
    number; a denser signal than an exact match while a policy is still far off."""
    match, target = _INTEGER.search(stated_answer(completion)), _INTEGER.fullmatch(normalize_answer(str(answer)))
    return 1.0 / (1.0 + abs(int(match.group()) - int(target.group()))) if match and target else 0.0


class ReferenceAnswer(Task):
    """Rows of any dataset with an `answer` column; it only scores, it draws nothing."""

    name = family = "answer"

    def draw(self, rng, **options):
        raise ValueError("The reference-answer task scores rows of a dataset; it does not generate any.")

    def evaluate(self, example: dict, completion) -> bool:
        return answer_matches(completion, example["answer"])

    def reward(self, example: dict, completion) -> float:
        return float(normalized_match(completion, example["answer"]))


ANSWER = ReferenceAnswer()
