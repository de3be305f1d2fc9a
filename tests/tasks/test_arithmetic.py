"""Addition, parity and reversal: deterministic examples, exact-match evaluation, and their synthetic datasets."""

from openllm.data.post_training import check_dataset
from openllm.tasks import synthetic_dataset
from openllm.tasks.answer import answer_matches
from openllm.tasks.arithmetic import ADDITION, MIX, NAMES, PARITY, REVERSE, make_task_examples


def _solve(prompt: str) -> str:
    words = prompt.rstrip("?.").split()
    if prompt.startswith("What is"):
        return str(int(words[2]) + int(words[4]))
    if prompt.startswith("Is"):
        return "even" if int(words[1]) % 2 == 0 else "odd"
    return words[-1][::-1]


def test_tasks_are_checkable_and_splits_disjoint():
    train = make_task_examples(NAMES, 600, "train")
    test = make_task_examples(NAMES, 150, "test")
    for ex in train + test:
        assert ex["answer"] == _solve(ex["prompt"]) != ex["wrong"]
    assert {e["task"] for e in train} == set(NAMES)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert make_task_examples(NAMES, 50, "train") == train[:50]  # deterministic
    assert MIX.examples("train", 600) == train


def test_same_seed_same_examples_as_ever():
    assert ADDITION.examples("test", 2) == [
        {"task": "addition", "prompt": "What is 12 + 15?", "answer": "27", "wrong": "30"},
        {"task": "addition", "prompt": "What is 9 + 0?", "answer": "9", "wrong": "11"}]
    assert PARITY.examples("test", 1) == [{"task": "parity", "prompt": "Is 777 even or odd?", "answer": "odd",
                                           "wrong": "even"}]
    assert REVERSE.examples("test", 1) == [{"task": "reverse", "prompt": "Reverse the letters of bfefc.",
                                            "answer": "cfefb", "wrong": "bfefc"}]
    assert [e["prompt"] for e in MIX.examples("train", 3)] == ["What is 1 + 11?", "Is 530 even or odd?",
                                                               "Reverse the letters of bdbd."]
    assert [e["answer"] for e in MIX.examples("test", 3, seed=1)] == ["28", "even", "cfcd"]


def test_evaluate_and_reward_right_and_wrong_answers():
    example = ADDITION.examples("test", 1)[0]                 # What is 12 + 15?
    assert ADDITION.evaluate(example, " 27\n") and ADDITION.reward(example, "27") == 1.0
    assert not ADDITION.evaluate(example, "30") and ADDITION.reward(example, "27 or so") == 0.0
    assert not ADDITION.evaluate(example, "#### 27")          # the arithmetic tasks answer bare
    assert answer_matches("#### 27", "27")                    # ...which an `answer` column accepts either way
    assert MIX.evaluate({"task": "parity", "answer": "odd"}, [{"role": "assistant", "content": "odd"}])


def test_preference_pairs_chosen_correct_rejected_wrong():
    ds = synthetic_dataset("openllm:mix", "dpo", train_size=60, test_size=10)
    for row in ds["train"]:
        assert MIX.evaluate(row, row["chosen"]) and not MIX.evaluate(row, row["rejected"])
    assert check_dataset(ds["train"], "dpo") == "preference"
    standard = synthetic_dataset("openllm:addition", "sft", fmt="standard", train_size=5, test_size=5)["train"]
    assert check_dataset(standard, "sft") == "prompt-completion" and isinstance(standard[0]["prompt"], str)
