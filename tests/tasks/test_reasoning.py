"""Reasoning tasks: worked solutions a program can check, disjoint held-out questions, the TRL formats per stage,
and GSM8K-style `question`/`answer` data through the same loader."""

import re

import pytest
from helpers.recipes import write_jsonl

from openllm.data.post_training import check_dataset
from openllm.tasks import load_post_dataset
from openllm.tasks.reasoning import (
    ADDITION_COT,
    NAMES,
    WORD_PROBLEMS,
    addition_solution,
    check_solution,
    final_answer,
    final_answer_is,
    from_question_answer,
    is_grounded,
    is_verified,
    make_reasoning_examples,
    word_problem_solution,
)

TASKS = NAMES

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
                 "many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
               "in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much "
                 "did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "A shop sells 1,200 pens a day. How many does it sell in 2 days?",
     "answer": "1,200 * 2 = <<1200*2=2400>>2,400\n#### 2,400"},
]


def _numbers(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def test_addition_is_worked_column_by_column_and_checks_out():
    solution = addition_solution(457, 68)
    assert solution == ("7 + 8 + 0 = 15, write 5 carry 1\n5 + 6 + 1 = 12, write 2 carry 1\n"
                        "4 + 0 + 1 = 5, write 5 carry 0\n#### 525")
    assert addition_solution(95, 17).endswith("#### 112")  # the last carry becomes the leading digit
    check = check_solution(solution)
    assert (check.steps, check.consistent, check.answer, check.well_formed) == (3, 3, "525", True)


def test_every_task_solution_is_right_and_every_rejected_one_wrong():
    examples = make_reasoning_examples(TASKS, 400, "train") + make_reasoning_examples(TASKS, 100, "test")
    for ex in examples:
        a, b = _numbers(ex["prompt"])[:2]
        if ex["task"] == "addition-cot":
            assert ex["answer"] == str(a + b)
        assert check_solution(ex["solution"]).well_formed and final_answer_is(ex["solution"], ex["answer"])
        wrong = check_solution(ex["wrong_solution"])
        # one slip, carried through: exactly one inconsistent step and a wrong final answer
        assert wrong.steps - wrong.consistent == 1 and wrong.answer != ex["answer"]
    assert {ex["task"] for ex in examples} == set(TASKS)


def test_verified_means_right_answer_by_checked_steps_on_the_questions_numbers():
    question = "Ada has 12 apples, gets 5 more and gives away 4. How many apples does Ada have now?"
    solution = "12 + 5 = 17\n17 - 4 = 13\n#### 13"
    assert is_grounded(question, solution) and is_verified(question, solution, "13")
    guess = "#### 13"                                      # right answer, no work
    own_numbers = "10 + 3 = 13\n#### 13"                    # tidy arithmetic on numbers the question never states
    slip = "12 + 5 = 17\n17 - 4 = 12\n#### 13"              # a step that does not hold
    for completion in (guess, own_numbers, slip):
        assert final_answer_is(completion, "13") and not is_verified(question, completion, "13")
    assert not is_grounded(question, own_numbers)
    addition = "What is 57 + 68?"
    assert is_verified(addition, addition_solution(57, 68), "125")
    assert not is_grounded(addition, addition_solution(59, 66))  # same sum, other digits
    examples = make_reasoning_examples(TASKS, 200, "test")
    assert all(is_verified(ex["prompt"], ex["solution"], ex["answer"]) for ex in examples)
    assert not any(is_verified(ex["prompt"], ex["wrong_solution"], ex["answer"]) for ex in examples)


def test_terse_fraction_gives_some_answers_alone_in_every_stage_and_only_for_reasoning_data():
    examples = make_reasoning_examples(TASKS, 400, "train", terse_fraction=0.5)
    terse = [ex for ex in examples if "\n" not in ex["solution"]]
    assert 0.4 < len(terse) / len(examples) < 0.6
    for ex in terse:  # the answer line alone, and a wrong answer line for the rejected side
        assert ex["solution"] == f"#### {ex['answer']}" and final_answer(ex["wrong_solution"]) != ex["answer"]
        assert "\n" not in ex["wrong_solution"]
    sft = load_post_dataset("openllm:reasoning", "sft", terse_fraction=0.5)["train"]
    assert any(row["messages"][-1]["content"].startswith("####") for row in sft)
    with pytest.raises(ValueError, match=r"terse_fraction=0.5 applies to the synthetic reasoning data .* not to "
                                         r"openllm:mix: set terse_fraction: 0"):
        load_post_dataset("openllm:mix", "sft", terse_fraction=0.5)
    with pytest.raises(ValueError, match="terse_fraction must be between 0 and 1"):
        make_reasoning_examples(TASKS, 4, terse_fraction=2)


def test_word_problem_steps_chain_their_results():
    steps = [(6, "*", 3), (None, "+", 11), (None, "-", 22)]
    assert word_problem_solution(steps) == "6 * 3 = 18\n18 + 11 = 29\n29 - 22 = 7\n#### 7"
    assert word_problem_solution(steps, slip=1, delta=2) == "6 * 3 = 18\n18 + 11 = 31\n31 - 22 = 9\n#### 9"


def test_held_out_questions_never_appear_in_training_even_reworded():
    train = make_reasoning_examples(TASKS, 3000, "train")
    test = make_reasoning_examples(TASKS, 300, "test")
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    # the split is decided by the problem's numbers, not its wording: no test solution is worked in training
    assert not {e["solution"] for e in train} & {e["solution"] for e in test}
    assert make_reasoning_examples(TASKS, 20, "train") == train[:20]


@pytest.mark.parametrize("text, steps, consistent, answer, problem", [
    ("7 + 8 + 0 = 15, write 5 carry 1\n5 + 6 + 0 = 11, write 1 carry 1\n#### 115", 2, 1, "115",
     "adds carry 0 but the previous column carried 1"),
    ("7 + 8 + 0 = 15, write 1 carry 5\n#### 15", 1, 0, "15", "15 is not 'write 5 carry 1'"),
    ("3 * 4 = 12\n12 - 5 = 8\n#### 8", 2, 1, "8", "12 - 5 = 8 does not hold"),
    ("3 * 4 = 12\n12 - 5 = 7\n#### 9", 2, 2, "9", "the answer 9 does not follow from the steps (7)"),
    ("3 * 4 = 12\n#### 12\n12 - 5 = 7", 2, 2, "12", "the answer line is not the last line"),
    ("The answer is 12.", 0, 0, None, "no `#### <answer>` line"),
    ("#### 12\n#### 13", 0, 0, "13", "2 answer lines"),
])
def test_check_solution_finds_the_slip(text, steps, consistent, answer, problem):
    check = check_solution(text)
    assert (check.steps, check.consistent, check.answer) == (steps, consistent, answer)
    assert not check.well_formed and any(problem in p for p in check.problems), check.problems


def test_final_answer_normalizes_numbers_and_reads_the_last_mark():
    assert final_answer("x\n#### 2,400") == "2400"
    assert final_answer("#### $10.00") == "10"
    assert final_answer("#### 1\n#### 3") == "3"
    assert final_answer("no mark 42") is None and final_answer("####  ") is None
    assert final_answer([{"role": "assistant", "content": "1 + 1 = 2\n#### 2"}]) == "2"


@pytest.mark.parametrize("name, tasks", [("openllm:addition-cot", {"addition-cot"}),
                                         ("openllm:word-problems", {"word-problems"}),
                                         ("openllm:reasoning", set(TASKS))])
def test_registered_as_synthetic_datasets_for_every_stage(name, tasks):
    expected = {"sft": "messages", "dpo": "preference", "reward": "preference", "rlhf": "prompt"}
    for stage, data_format in expected.items():
        dataset = load_post_dataset(name, stage)
        assert {stage: check_dataset(dataset["train"], stage)} == {stage: data_format}
        assert set(dataset["train"]["task"]) == tasks and len(dataset["test"]) == 200
        row = dataset["test"][0]
        if stage == "sft":
            assert final_answer_is(row["messages"][-1]["content"], row["answer"])
        elif stage != "rlhf":
            assert final_answer_is(row["chosen"], row["answer"])
            assert not final_answer_is(row["rejected"], row["answer"])


def test_unknown_synthetic_name_lists_the_reasoning_tasks():
    with pytest.raises(ValueError, match="Unknown task 'openllm:addition-cots'. Choose from: .*openllm:reasoning, "
                                         "openllm:addition-cot, openllm:word-problems"):
        load_post_dataset("openllm:addition-cots", "sft")


def test_gsm8k_rows_convert_without_calculator_annotations():
    example = from_question_answer(GSM8K_ROWS[0])
    assert example["answer"] == "72" and "<<" not in example["solution"]
    assert example["solution"].startswith("Natalia sold 48/2 = 24 clips in May.")
    check = check_solution(example["solution"])
    assert (check.steps, check.consistent, check.well_formed) == (2, 2, True)
    assert check_solution(from_question_answer(GSM8K_ROWS[1])["solution"]).consistent == 2  # `$`, `x`, decimals
    assert from_question_answer(GSM8K_ROWS[2])["answer"] == "2400"
    assert final_answer(example["wrong_solution"]) == "73"
    with pytest.raises(ValueError, match="without a `#### <final answer>` line"):
        from_question_answer({"question": "q", "answer": "42"})


@pytest.mark.parametrize("stage, data_format", [("sft", "messages"), ("dpo", "preference"), ("rlhf", "prompt")])
def test_gsm8k_style_jsonl_goes_through_the_same_loader(tmp_path, stage, data_format):
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM8K_ROWS[:2])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM8K_ROWS[2:])
    dataset = load_post_dataset(str(tmp_path / "gsm8k"), stage)
    assert check_dataset(dataset["train"], stage) == data_format
    assert dataset["train"]["answer"] == ["72", "10"] and dataset["test"]["answer"] == ["2400"]
    if stage == "sft":
        assert dataset["train"][0]["messages"][0] == {"role": "user", "content": GSM8K_ROWS[0]["question"]}
        assert dataset["train"][0]["messages"][1]["content"].endswith("in April and May.\n#### 72")
    standard = load_post_dataset(str(tmp_path / "gsm8k" / "train.jsonl"), stage, config="standard", test_size=0.5)
    assert isinstance(standard["train"][0]["prompt" if stage != "sft" else "completion"], str)


def test_same_seed_same_examples_as_ever():
    """Pinned: the chain's held-out questions (and so its numbers) must not move."""
    assert ADDITION_COT.examples("test", 2) == [
        {"task": "addition-cot", "prompt": "What is 45 + 49?",
         "solution": "5 + 9 + 0 = 14, write 4 carry 1\n4 + 4 + 1 = 9, write 9 carry 0\n#### 94", "answer": "94",
         "wrong_solution": "5 + 9 + 0 = 14, write 4 carry 0\n4 + 4 + 0 = 8, write 8 carry 0\n#### 84"},
        {"task": "addition-cot", "prompt": "What is 88 + 81?",
         "solution": "8 + 1 + 0 = 9, write 9 carry 0\n8 + 8 + 0 = 16, write 6 carry 1\n#### 169", "answer": "169",
         "wrong_solution": "8 + 1 + 0 = 9, write 9 carry 0\n8 + 8 + 0 = 16, write 6 carry 0\n#### 69"}]
    assert WORD_PROBLEMS.examples("test", 1) == [
        {"task": "word-problems",
         "prompt": "Gus has 14 apples, gets 5 more and gives away 17. How many apples does Gus have now?",
         "solution": "14 + 5 = 19\n19 - 17 = 2\n#### 2", "answer": "2",
         "wrong_solution": "14 + 5 = 19\n19 - 17 = 0\n#### 0"}]
    terse = make_reasoning_examples(n=3, terse_fraction=0.5)
    assert [e["prompt"] for e in terse] == ["What is 77 + 54?", "Leo shares 8 books equally among 2 friends. One "
                                            "friend then finds 6 more. How many books does that friend have?",
                                            "What is 56 + 94?"]
    assert (terse[1]["solution"], terse[1]["wrong_solution"]) == ("#### 10", "#### 9")


def test_a_task_evaluates_the_answer_line_and_rewards_only_verified_solutions():
    example = WORD_PROBLEMS.examples("test", 1)[0]
    guess = "#### 2"                                           # right answer, no work
    chat = [{"role": "assistant", "content": example["solution"]}]
    assert [WORD_PROBLEMS.evaluate(example, c) for c in (example["solution"], chat, guess, "2")] == [
        True, True, True, False]                               # a bare answer has no `####` line
    assert not WORD_PROBLEMS.evaluate(example, example["wrong_solution"])
    assert [WORD_PROBLEMS.reward(example, c) for c in (example["solution"], guess, example["wrong_solution"])] == [
        1.0, 0.0, 0.0]
