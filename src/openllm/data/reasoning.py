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
into units and carry, the next column must add the carry, and the answer line must be there. The reward functions in
`openllm.training.rewards` score completions with it.

Rows carry `task`, `answer` (the final answer alone) and the stage's TRL columns: `messages` (SFT), `prompt` +
`chosen` + `rejected` (DPO, reward model; the rejected solution makes one realistic slip and carries it through
to a wrong answer), `prompt` (RLHF). Train and test questions are disjoint by construction: a stable hash of the
question's numbers (not its wording) decides its split.

    python -m openllm.data.reasoning write --output-dir data/reasoning          # JSONL per stage, to read or edit
    python -m openllm.data.reasoning eval outputs/chain/sft --task addition-cot  # greedy exact match and pass@k
"""

import argparse
import ast
import json
import operator
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .post_training import FORMATS, answer_of, draw_split, format_examples

TASKS = ("addition-cot", "word-problems")
MIX = "reasoning"
ANSWER_MARK = "####"

# ---------------------------------------------------------------------------------------------------------------------
# Tasks
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


_TASK_FUNCTIONS = {"addition-cot": _addition, "word-problems": _word_problems}


def make_reasoning_examples(tasks=TASKS, n: int = 1000, split: str = "train", seed: int = 0,
                            test_fraction: float = 0.1, terse_fraction: float = 0.0) -> list[dict]:
    """`n` examples {task, prompt, solution, answer, wrong_solution} cycling through `tasks`. A question's split is
    decided by a hash of its numbers, so no test problem appears in training under other names or wording.
    `terse_fraction` of the examples give the answer line alone (`#### 525`, and a wrong one for `wrong_solution`),
    as much real instruction data does: a model trained on both styles answers either way, and which way pays off
    is what RL on verified answers finds (`recipes/chain/`)."""
    unknown = [t for t in tasks if t not in _TASK_FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown reasoning task(s) {unknown}. Choose from: {', '.join(TASKS)}.")

    if not 0 <= terse_fraction <= 1:
        raise ValueError(f"terse_fraction must be between 0 and 1, got {terse_fraction}.")

    def draw(task, rng):
        key, prompt, solution, wrong = _TASK_FUNCTIONS[task](rng)
        if terse_fraction and rng.random() < terse_fraction:
            solution, wrong = solution.splitlines()[-1], wrong.splitlines()[-1]
        return f"{task}:{key}", {"task": task, "prompt": prompt, "solution": solution,
                                 "answer": final_answer(solution), "wrong_solution": wrong}

    return draw_split(draw, tasks, n, split, random.Random(f"reasoning-{seed}-{split}"), test_fraction,
                      kind="reasoning task")


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
    from datasets import Dataset, DatasetDict

    if not isinstance(dataset, DatasetDict) or not all(is_question_answer(split) for split in dataset.values()):
        return dataset
    fmt = fmt if fmt in FORMATS else "conversational"
    return DatasetDict({name: Dataset.from_list(format_reasoning([from_question_answer(r) for r in split], stage, fmt))
                        for name, split in dataset.items()})


# ---------------------------------------------------------------------------------------------------------------------
# TRL formats
# ---------------------------------------------------------------------------------------------------------------------


def format_reasoning(examples: list[dict], stage: str, fmt: str = "conversational") -> list[dict]:
    """Reasoning examples in the TRL format of `stage`, keeping `task` and `answer` for the rewards."""
    return format_examples(examples, stage, fmt, chosen="solution", rejected="wrong_solution", answer_lead="\n")


def is_reasoning_dataset(name: str) -> bool:
    from .post_training import SYNTHETIC_PREFIX

    return name.startswith(SYNTHETIC_PREFIX) and name[len(SYNTHETIC_PREFIX):] in (MIX, *TASKS)


def reasoning_dataset(name: str, stage: str, fmt: str | None = None, train_size: int = 4000, test_size: int = 200,
                      seed: int = 0, terse_fraction: float = 0.0):
    """DatasetDict(train, test) for `openllm:<task>` (`openllm:reasoning` = every reasoning task); see
    `make_reasoning_examples` for `terse_fraction`."""
    from datasets import Dataset, DatasetDict

    from .post_training import SYNTHETIC_PREFIX

    task = name[len(SYNTHETIC_PREFIX):]
    tasks = TASKS if task == MIX else (task,)
    return DatasetDict({
        split: Dataset.from_list(format_reasoning(
            make_reasoning_examples(tasks, n, split, seed, terse_fraction=terse_fraction), stage,
            fmt or "conversational"))
        for split, n in (("train", train_size), ("test", test_size))
    })


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
    return is_correct(completion, answer) and check_solution(completion).well_formed and \
        is_grounded(question, completion)


def is_correct(completion, answer) -> bool:
    """The completion's `####` answer equals `answer` (both normalized)."""
    predicted = final_answer(completion)
    return predicted is not None and predicted == normalize_answer(str(answer))


# ---------------------------------------------------------------------------------------------------------------------
# Measuring a model: greedy exact match and pass@k on held-out questions
# ---------------------------------------------------------------------------------------------------------------------


def generate(model, tokenizer, prompts, max_new_tokens: int = 96, batch_size: int = 64, num_samples: int = 1,
             temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
    """`num_samples` completions per prompt (greedy when temperature is 0), chat-templated when prompts are
    message lists."""
    import torch

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list)
             else p for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    sample = temperature > 0
    out_texts = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                                     temperature=temperature if sample else None, top_k=0 if sample else None,
                                     top_p=1.0 if sample else None, num_return_sequences=num_samples,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out_texts += [decoded[i:i + num_samples] for i in range(0, len(decoded), num_samples)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out_texts


def evaluate_reasoning(model, tokenizer, rows, max_new_tokens: int = 96, k: int = 0, temperature: float = 1.0,
                       batch_size: int = 64) -> dict:
    """Greedy exact match and well-formed share on `rows` ({prompt, answer}); with `k`, also pass@1 and pass@k of
    `k` samples at `temperature` (the headroom RL can turn into greedy accuracy)."""
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    greedy = [c[0] for c in generate(model, tokenizer, prompts, max_new_tokens, batch_size)]
    result = {"exact_match": sum(map(is_correct, greedy, answers)) / len(rows),
              "well_formed": sum(check_solution(c).well_formed for c in greedy) / len(rows), "n": len(rows)}
    if k:
        samples = generate(model, tokenizer, prompts, max_new_tokens, max(batch_size // k, 1), k, temperature)
        hits = [[is_correct(c, a) for c in group] for group, a in zip(samples, answers)]
        result[f"pass@1_t{temperature:g}"] = sum(map(sum, hits)) / (k * len(rows))
        result[f"pass@{k}_t{temperature:g}"] = sum(map(any, hits)) / len(rows)
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}


# ---------------------------------------------------------------------------------------------------------------------
# python -m openllm.data.reasoning
# ---------------------------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m openllm.data.reasoning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write the reasoning tasks as JSONL, one folder per stage format")
    write.add_argument("--output-dir", required=True)
    write.add_argument("--train-size", type=int, default=2000)
    write.add_argument("--test-size", type=int, default=200)
    write.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    score = sub.add_parser("eval", help="greedy exact match (and pass@k) of a model on held-out questions")
    score.add_argument("model")
    score.add_argument("--task", default=MIX, choices=(MIX, *TASKS))
    score.add_argument("--n", type=int, default=200)
    score.add_argument("--k", type=int, default=0, help="also sample k completions per question for pass@k")
    score.add_argument("--temperature", type=float, default=1.0)
    score.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    if args.command == "write":
        from .. import atomic

        for stage, folder in (("sft", "sft"), ("dpo", "preference"), ("rlhf", "prompts")):
            for split, n in (("train", args.train_size), ("test", args.test_size)):
                rows = format_reasoning(make_reasoning_examples(args.tasks, n, split), stage)
                atomic.write_text(Path(args.output_dir) / folder / f"{split}.jsonl",
                                  "".join(json.dumps(row) + "\n" for row in rows))
            print(f"{folder:<10} {Path(args.output_dir) / folder}/{{train,test}}.jsonl")
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import openllm.models  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tasks = TASKS if args.task == MIX else (args.task,)
    rows = format_reasoning(make_reasoning_examples(tasks, args.n, "test"), "rlhf")
    print(json.dumps(evaluate_reasoning(model, tokenizer, rows, args.max_new_tokens, args.k, args.temperature)))


if __name__ == "__main__":
    main()
