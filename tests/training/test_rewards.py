"""Programmatic rewards on worked solutions: the answer line and the steps are scored separately, so a right answer
in the wrong format and a tidy solution with the wrong answer each earn what they deserve."""

import pytest

from openllm.tasks.reasoning import addition_solution
from openllm.training.rewards import REWARD_FUNCS, get_reward_funcs

RIGHT = addition_solution(457, 68)                      # three consistent columns, #### 525
SLIP = addition_solution(457, 68, slip=0)               # carry forgotten in the units column: #### 515
PROSE = "Adding the columns gives 525."                 # right number, no steps and no answer line
BARE = "525"                                            # right answer, nothing else
NO_LINE = RIGHT.replace("#### 525", "so 525")           # right steps, no answer line
WRONG_LINE = RIGHT.replace("#### 525", "#### 524")      # right steps, answer that does not follow from them


def _rewards(name, completions, answer="525"):
    return [round(r, 4) for r in REWARD_FUNCS[name](completions, answer=[answer] * len(completions))]


def test_accuracy_reads_the_answer_line():
    assert _rewards("accuracy", [RIGHT, SLIP, PROSE, BARE, NO_LINE, WRONG_LINE]) == [1, 0, 0, 1, 0, 0]
    # chat messages as TRL passes them, and normalised numbers
    chat = [[{"role": "assistant", "content": "1,200 * 2 = 2,400\n#### 2,400"}]]
    assert REWARD_FUNCS["accuracy"](chat, answer=["2400"]) == [1.0]
    assert REWARD_FUNCS["accuracy"](["####"], answer=["0"]) == [0.0]


def test_reasoning_format_gives_partial_credit_whatever_the_answer():
    scores = dict(zip(["right", "slip", "prose", "bare", "no_line", "wrong_line"],
                      _rewards("reasoning_format", [RIGHT, SLIP, PROSE, BARE, NO_LINE, WRONG_LINE])))
    assert scores["right"] == 1.0
    # the slip: 2 of 3 columns consistent (the units column drops its carry; the next one then adds carry 0
    # consistently with what was written), answer line present and following from the steps
    assert scores["slip"] == pytest.approx(0.5 * 2 / 3 + 0.25 + 0.25, abs=1e-4)
    assert scores["prose"] == scores["bare"] == 0.0  # right answer, wrong format: nothing for format
    assert scores["no_line"] == 0.5                  # steps all right, no answer line
    assert scores["wrong_line"] == 0.75              # answer line present but not what the steps computed
    assert _rewards("reasoning_format", [RIGHT + "\n#### 525"]) == [0.5 + 0.0 + 0.25]  # two answer lines


def test_right_format_wrong_answer_earns_format_but_not_accuracy():
    tidy_but_wrong = addition_solution(457, 69)  # a perfect solution to another question
    assert _rewards("reasoning_format", [tidy_but_wrong]) == [1.0]
    assert _rewards("accuracy", [tidy_but_wrong]) == [0.0]


def test_answer_digits_is_dense_partial_credit():
    completions = ["#### 525", "#### 515", "#### 425", "#### 5250", "#### 25", "525", "#### abc"]
    assert _rewards("answer_digits", completions) == [1.0, 0.6667, 0.6667, 0.0, 0.6667, 0.0, 0.0]
    assert _rewards("answer_digits", [SLIP]) == [0.6667]


def test_closeness_uses_the_answer_line_when_there_is_one():
    assert _rewards("closeness", ["#### 524", "1 + 1 = 2\n#### 525", "no number"]) == [0.5, 1.0, 0.0]
    assert _rewards("closeness", ["524 maybe"]) == [0.5]  # plain answers keep their old behaviour


def test_verified_accuracy_pays_for_solving_not_for_guessing():
    question = [{"role": "user", "content": "What is 457 + 68?"}]  # prompts arrive as chat messages from TRL
    completions = [RIGHT, BARE, addition_solution(459, 66), WRONG_LINE, SLIP]
    assert REWARD_FUNCS["verified_accuracy"]([question] * 5, completions, answer=["525"] * 5) == [1, 0, 0, 0, 0]
    assert _rewards("accuracy", completions) == [1, 1, 1, 0, 0]  # plain accuracy pays the guess and the wrong digits


def test_get_reward_funcs_by_name_and_clear_error():
    assert get_reward_funcs(["accuracy", "reasoning_format"]) == [REWARD_FUNCS["accuracy"],
                                                                  REWARD_FUNCS["reasoning_format"]]
    assert get_reward_funcs("answer_digits") == [REWARD_FUNCS["answer_digits"]]
    with pytest.raises(ValueError, match=r"Unknown reward function\(s\) \[.format.\]\. Valid names: accuracy, "
                                         r"verified_accuracy, closeness, answer_digits, reasoning_format"):
        get_reward_funcs(["accuracy", "format"])


def test_reward_registry_on_bare_answers():
    completions = [[{"role": "assistant", "content": "12"}], [{"role": "assistant", "content": "11 maybe"}]]
    assert REWARD_FUNCS["accuracy"](completions, answer=["12", "12"]) == [1.0, 0.0]
    assert REWARD_FUNCS["closeness"](completions, answer=["12", "12"]) == [1.0, 0.5]
    assert REWARD_FUNCS["digits"](["12", "ab"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="Unknown reward function.*'acuracy'.*Valid names: accuracy, "
                                         "verified_accuracy, closeness"):
        get_reward_funcs(["accuracy", "acuracy"])
