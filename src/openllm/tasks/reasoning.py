"""Reasoning tasks with checkable answers: worked solutions whose every step a program can verify, ending in a
GSM8K-style answer line.

    dataset_name: openllm:addition-cot   # multi-digit addition worked column by column, with carries
    dataset_name: openllm:word-problems  # two- and three-step arithmetic word problems, one equation per step
    dataset_name: openllm:reasoning      # both
    dataset_name: openai/gsm8k           # (dataset_config: main) or a local JSONL with `question` and `answer`

A solution is one step per line and a last line `#### <answer>`:

    What is 457 + 68?
    7 + 8 + 0 = 15, write 5 carry 1
    5 + 6 + 1 = 12, write 2 carry 1
    4 + 0 + 1 = 5, write 5 carry 0
    #### 525

`check_solution` parses that: every equation on a line must hold, a `write u carry k` step must split its sum
into units and carry, the next column must add the carry, and the answer line must be there. A task `evaluate`s a
completion by its `####` answer (`final_answer_is`) and `reward`s it only when that answer is reached by grounded
steps that all hold (`is_verified`); `answer_digits` and `format_score` are denser rewards.

Examples are {task, prompt, solution, answer (the final answer alone), wrong_solution}: the wrong solution makes one
realistic slip and carries it through to a wrong answer. Train and test questions are disjoint by construction: a
stable hash of the question's numbers (not its wording) decides its split.
"""

import ast
import operator
import random
import re
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict

from ..data.post_training import FORMATS
from .common import Task, TaskMixture, answer_of

ANSWER_MARK = "####"

# ---------------------------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------------------------


def addition_solution(a: int, b: int, slip: int | None = None) -> str:
    """`a + b` worked column by column from the right. `slip` = the column whose carry is forgotten (or, when it has
    none, whose units digit is off by one), the rest worked correctly from there: a wrong answer, one plausible
    mistake away from the right one."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, digits, carry = [], [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        units, out = total % 10, total // 10
        if i == slip:
            if out:
                out = 0
            else:
                units = (units + 1) % 10
        lines.append(f"{x} + {y} + {carry} = {total}, write {units} carry {out}")
        digits.append(str(units))
        carry = out
    if carry:
        digits.append(str(carry))
    answer = str(int("".join(reversed(digits))))
    return "\n".join(lines + [f"{ANSWER_MARK} {answer}"])


def _addition(rng: random.Random, min_digits: int = 2, max_digits: int = 2):
    def number():
        digits = rng.randint(min_digits, max_digits)
        return rng.randint(10 ** (digits - 1), 10 ** digits - 1)

    a, b = number(), number()
    solution = addition_solution(a, b)
    columns = solution.count("\n")
    slip = next((i for i, line in enumerate(solution.splitlines()) if line.endswith("carry 1")),
                rng.randrange(columns))
    return f"{a}+{b}", f"What is {a} + {b}?", solution, addition_solution(a, b, slip)


_NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kim", "Leo", "Mia", "Noor")
_ITEMS = ("apples", "marbles", "stickers", "cards", "shells", "pencils", "coins", "books", "stamps", "beads")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


def _word_problem(rng: random.Random):
    """(key, question, steps) with steps [(x, op, y)], each applied to the previous result (x=None)."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(2, 20), rng.randint(2, 9)
        c = rng.randint(1, a + b - 1)
        question = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} does {name} have now?"
        steps = [(a, "+", b), (None, "-", c)]
    elif kind == 1:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        c = rng.randint(1, a * b - 1)
        question = (f"{name} buys {a} bags with {b} {item} in each and loses {c} of them. How many {item} does "
                    f"{name} have left?")
        steps = [(a, "*", b), (None, "-", c)]
    elif kind == 2:
        b, q = rng.randint(2, 5), rng.randint(2, 5)
        c = rng.randint(1, 9)
        question = (f"{name} shares {b * q} {item} equally among {b} friends. One friend then finds {c} more. How "
                    f"many {item} does that friend have?")
        steps = [(b * q, "/", b), (None, "+", c)]
    else:
        a, b, c = rng.randint(2, 5), rng.randint(2, 5), rng.randint(2, 9)
        d = rng.randint(1, a * b + c - 1)
        question = (f"{name} has {a} boxes of {b} {item}, buys {c} more and gives {d} to a friend. How many {item} "
                    f"does {name} have now?")
        steps = [(a, "*", b), (None, "+", c), (None, "-", d)]
    key = f"{kind}:" + ",".join(str(x) for step in steps for x in step if isinstance(x, int))
    return key, question, steps


def word_problem_solution(steps, slip: int | None = None, delta: int = 1) -> str:
    """One `x op y = z` line per step, each starting from the previous result; `slip` = the step whose result is off
    by `delta`, carried through the later steps."""
    lines, value = [], None
    for i, (x, op, y) in enumerate(steps):
        x = value if x is None else x
        value = _OPS[op](x, y) + (delta if i == slip else 0)
        lines.append(f"{x} {op} {y} = {value}")
    return "\n".join(lines + [f"{ANSWER_MARK} {value}"])


def _word_problems(rng: random.Random):
    key, question, steps = _word_problem(rng)
    slip = rng.randrange(len(steps))
    return key, question, word_problem_solution(steps), word_problem_solution(steps, slip, rng.choice((-2, -1, 1, 2)))


# ---------------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------------


class ReasoningTask(Task):
    family = "reasoning"
    kind = "reasoning task"
    chosen, rejected, answer_lead = "solution", "wrong_solution", "\n"

    def __init__(self, name: str, make=None):
        self.name, self.make = name, make

    def rng(self, seed: int, split: str) -> random.Random:
        return random.Random(f"reasoning-{seed}-{split}")

    def draw(self, rng: random.Random, terse_fraction: float = 0.0) -> tuple[str, dict]:
        """`terse_fraction` of the examples give the answer line alone (`#### 525`, and a wrong one for
        `wrong_solution`), as much real instruction data does: a model trained on both styles answers either way,
        and which way pays off is what RL on verified answers finds (`recipes/chain/`)."""
        if self.make is None:
            raise ValueError(f"{self.name} is read from a dataset (e.g. dataset_name: openai/gsm8k), not generated.")
        key, prompt, solution, wrong = self.make(rng)
        if terse_fraction and rng.random() < terse_fraction:
            solution, wrong = solution.splitlines()[-1], wrong.splitlines()[-1]
        return f"{self.name}:{key}", {"task": self.name, "prompt": prompt, "solution": solution,
                                      "answer": final_answer(solution), "wrong_solution": wrong}

    def examples(self, split: str = "train", n: int = 1000, seed: int = 0, test_fraction: float = 0.1,
                 terse_fraction: float = 0.0) -> list[dict]:
        return make_reasoning_examples((self.name,), n, split, seed, test_fraction, terse_fraction)

    def evaluate(self, example: dict, completion) -> bool:
        return final_answer_is(completion, example["answer"])

    def reward(self, example: dict, completion) -> float:
        return float(is_verified(example["prompt"], completion, example["answer"]))


ADDITION_COT = ReasoningTask("addition-cot", _addition)
WORD_PROBLEMS = ReasoningTask("word-problems", _word_problems)
GSM8K = ReasoningTask("gsm8k")  # rows converted from GSM8K-style data: scored like the others, never generated
TASKS = (ADDITION_COT, WORD_PROBLEMS)
NAMES = tuple(t.name for t in TASKS)
MIX = TaskMixture("reasoning", TASKS)


def make_reasoning_examples(tasks=NAMES, n: int = 1000, split: str = "train", seed: int = 0,
                            test_fraction: float = 0.1, terse_fraction: float = 0.0) -> list[dict]:
    """`n` examples {task, prompt, solution, answer, wrong_solution} cycling through the named `tasks`. A question's
    split is decided by a hash of its numbers, so no test problem appears in training under other names or wording.
    See `ReasoningTask.draw` for `terse_fraction`."""
    unknown = [t for t in tasks if t not in NAMES]
    if unknown:
        raise ValueError(f"Unknown reasoning task(s) {unknown}. Choose from: {', '.join(NAMES)}.")
    if not 0 <= terse_fraction <= 1:
        raise ValueError(f"terse_fraction must be between 0 and 1, got {terse_fraction}.")
    by_name = {t.name: t for t in TASKS}
    return TaskMixture(",".join(tasks), [by_name[t] for t in tasks]).examples(split, n, seed, test_fraction,
                                                                              terse_fraction=terse_fraction)


# ---------------------------------------------------------------------------------------------------------------------
# GSM8K-style data: `question`, and `answer` = worked solution ending in `#### <final answer>`
# ---------------------------------------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def from_question_answer(row: dict, task: str = "gsm8k") -> dict:
    """A GSM8K row as a reasoning example. The calculator annotations (`<<48/2=24>>`) go: the text around them
    already states each equation. The rejected solution only changes the final answer (no generator to make a
    subtler slip here)."""
    solution = _CALCULATOR.sub("", row["answer"]).strip()
    answer = final_answer(solution)
    if answer is None:
        raise ValueError(f"GSM8K-style answer without a `{ANSWER_MARK} <final answer>` line: {row['answer'][-80:]!r}")
    wrong = _wrong_number(answer)
    head = solution[:solution.rindex(ANSWER_MARK)]
    return {"task": task, "prompt": row["question"].strip(), "solution": solution, "answer": answer,
            "wrong_solution": f"{head}{ANSWER_MARK} {wrong}"}


def _wrong_number(answer: str) -> str:
    try:
        value = float(answer)
    except ValueError:
        return answer + "0"
    return str(int(value) + 1) if value == int(value) else str(value + 1)


def is_question_answer(dataset) -> bool:
    """A GSM8K-style dataset: `question` and `answer` columns, answers ending in a `####` line."""
    columns = set(dataset.column_names)
    return {"question", "answer"} <= columns and not columns & {"messages", "prompt", "chosen"} and len(dataset) > 0 \
        and ANSWER_MARK in str(dataset[0]["answer"])


def convert_question_answer(dataset, stage: str, fmt: str | None = None):
    """Every split of a GSM8K-style DatasetDict in the TRL format of `stage`; other datasets unchanged."""
    if not isinstance(dataset, DatasetDict) or not all(is_question_answer(split) for split in dataset.values()):
        return dataset
    fmt = fmt if fmt in FORMATS else "conversational"
    return DatasetDict({name: Dataset.from_list(GSM8K.format([from_question_answer(r) for r in split], stage, fmt))
                        for name, split in dataset.items()})


# ---------------------------------------------------------------------------------------------------------------------
# Checking solutions
# ---------------------------------------------------------------------------------------------------------------------

_NUMBER = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
# an equation inside a line: `7 + 8 + 0 = 15`, `48/2 = 24`, `$12 * 3 = $36`; the left side is numbers and operators
_EQUATION = re.compile(rf"((?:\$?{_NUMBER}\s*[-+*/x×]\s*)+\$?{_NUMBER})\s*=\s*\$?({_NUMBER})")
_COLUMN = re.compile(r"^(\d) \+ (\d) \+ (\d) = (\d+), write (\d) carry (\d)$")
_ANSWER_LINE = re.compile(rf"^{ANSWER_MARK}\s*(\S.*?)\s*$")


def normalize_answer(text: str) -> str:
    """`1,000` → `1000`, `$5` → `5`, `7.0` → `7`; other answers are only stripped."""
    text = text.strip().rstrip(".")
    number = text.replace(",", "").lstrip("$")
    if re.fullmatch(r"-?\d+(\.\d+)?", number):
        return str(int(float(number))) if float(number) == int(float(number)) else number
    return text


def final_answer(completion) -> str | None:
    """The answer after the last `####` mark (normalized), or None when there is none."""
    text = answer_of(completion)
    if ANSWER_MARK not in text:
        return None
    answer = text[text.rindex(ANSWER_MARK) + len(ANSWER_MARK):].strip().split("\n")[0]
    return normalize_answer(answer) if answer.strip() else None


def _evaluate(expression: str) -> float | None:
    expression = expression.replace("$", "").replace(",", "").replace("×", "*").replace("x", "*")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def value(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = value(node.left), value(node.right)
            return ops[type(node.op)](left, right) if type(node.op) is not ast.Div or right else float("nan")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise ValueError(expression)

    try:
        return value(tree.body)
    except ValueError:
        return None


@dataclass
class SolutionCheck:
    """What `check_solution` found: `steps` lines with at least one equation, `consistent` of them correct (every
    equation holds, carries add up), and the final answer (None without a `####` line)."""

    steps: int = 0
    consistent: int = 0
    answer: str | None = None
    answer_lines: int = 0
    follows: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def step_score(self) -> float:
        return self.consistent / self.steps if self.steps else 0.0

    @property
    def well_formed(self) -> bool:
        """At least one step, every step consistent, and one answer line, last, that follows from the steps."""
        return (self.answer_lines == 1 and self.answer is not None and self.steps > 0
                and self.consistent == self.steps and self.follows and not self.problems)


def check_solution(completion) -> SolutionCheck:
    """Parse a worked solution line by line and check its arithmetic (see the module docstring)."""
    check = SolutionCheck()
    lines = [line.strip() for line in answer_of(completion).splitlines() if line.strip()]
    carry, written, result = 0, [], None
    for number, line in enumerate(lines, 1):
        answer = _ANSWER_LINE.match(line)
        if answer:
            check.answer_lines += 1
            if number != len(lines):
                check.problems.append(f"line {number}: the answer line is not the last line")
            continue
        equations = _EQUATION.findall(line)
        if not equations:
            continue
        check.steps += 1
        wrong = []
        for left, right in equations:
            value, stated = _evaluate(left), float(normalize_answer(right).replace(",", ""))
            if value is None or abs(value - stated) > 1e-6:
                wrong.append(f"{left.strip()} = {right} does not hold")
        column = _COLUMN.match(line)
        if column:
            x, y, carry_in, total, units, carry_out = map(int, column.groups())
            if carry_in != carry:
                wrong.append(f"adds carry {carry_in} but the previous column carried {carry}")
            if (units, carry_out) != (total % 10, total // 10):
                wrong.append(f"{total} is not 'write {total % 10} carry {total // 10}'")
            carry = carry_out
            written.append(str(units))
        else:
            result = normalize_answer(equations[-1][1])
        if wrong:
            check.problems.append(f"line {number}: " + "; ".join(wrong))
        else:
            check.consistent += 1
    check.answer = final_answer("\n".join(lines))
    # the answer must be what the steps computed: the written digits (and last carry) of a column addition, else
    # the result of the last equation
    derived = str(int("".join(reversed(written + ([str(carry)] if carry else []))))) if written else result
    check.follows = check.answer is not None and check.answer == derived
    if check.answer is not None and derived is not None and not check.follows:
        check.problems.append(f"the answer {check.answer} does not follow from the steps ({derived})")
    if check.answer_lines == 0:
        check.problems.append(f"no `{ANSWER_MARK} <answer>` line")
    elif check.answer_lines > 1:
        check.problems.append(f"{check.answer_lines} answer lines; give one")
    return check


def question_numbers(question) -> list[str]:
    """The numbers a question states, normalized (`1,200` → `1200`), in order."""
    if isinstance(question, list):  # chat messages: the last user turn
        question = next((m["content"] for m in reversed(question) if m.get("role") == "user"), "")
    return [normalize_answer(n) for n in re.findall(_NUMBER, str(question))]


def is_grounded(question, completion) -> bool:
    """Every step works on the question's numbers: an equation's operands are numbers the question states or results
    of earlier steps, and a column-addition step adds the digits of the question's two numbers in that column. A
    solution that guesses an answer, or computes tidily with numbers of its own, is not grounded."""
    numbers = question_numbers(question)
    known, column = set(numbers), 0
    operands = numbers[-2:] if len(numbers) >= 2 else numbers
    for line in answer_of(completion).splitlines():
        line = line.strip()
        if column_step := _COLUMN.match(line):
            x, y = column_step.groups()[:2]
            digits = [n.lstrip("-")[::-1] for n in operands]
            expected = [int(d[column]) if column < len(d) else 0 for d in digits]
            if sorted(expected) != sorted((int(x), int(y))):
                return False
            column += 1
            continue
        for left, right in _EQUATION.findall(line):
            used = [normalize_answer(n) for n in re.findall(_NUMBER, left.replace("$", ""))]
            if any(n not in known for n in used):
                return False
            known.add(normalize_answer(right))
    return True


def is_verified(question, completion, answer) -> bool:
    """Right `####` answer, reached by grounded steps that all hold (see `check_solution`, `is_grounded`)."""
    return final_answer_is(completion, answer) and check_solution(completion).well_formed and \
        is_grounded(question, completion)


def final_answer_is(completion, answer) -> bool:
    """The completion's `####` answer equals `answer` (both normalized)."""
    predicted = final_answer(completion)
    return predicted is not None and predicted == normalize_answer(str(answer))


# ---------------------------------------------------------------------------------------------------------------------
# Rewards denser than `is_verified`
# ---------------------------------------------------------------------------------------------------------------------


def answer_digits(completion, answer) -> float:
    """Share of digit positions, counted from the units, where the `####` answer matches the reference, over the
    longer of the two: 525 for 525 → 1.0, 515 → 0.67, 5250 → 0 (every digit shifted). Dense partial credit for
    column-by-column arithmetic, where one slip changes one digit. 0.0 without an answer line."""
    predicted, target = final_answer(completion), normalize_answer(str(answer))
    if not predicted:
        return 0.0
    return sum(p == t for p, t in zip(reversed(predicted), reversed(target))) / max(len(predicted), len(target))


def format_score(completion) -> float:
    """How well a worked solution is laid out, whatever its answer: 0.5 × the share of step lines whose arithmetic
    holds (carries included), 0.25 for one `#### <answer>` line at the end, 0.25 when that answer is what the steps
    computed. 0.0 for a bare answer with no steps; 1.0 for a solution with no slip."""
    check = check_solution(completion)
    one_answer_line = check.answer_lines == 1 and check.answer is not None and not any(
        "not the last line" in p for p in check.problems)
    return 0.5 * check.step_score + 0.25 * one_answer_line + 0.25 * (check.follows and check.steps > 0)
