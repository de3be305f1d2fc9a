"""`openllm tasks`: the checkable tasks — list them, write them as files, and score a model on their held-out part.

    openllm tasks list
    openllm tasks write openllm:reasoning --output-dir data/reasoning      # sft/, preference/, prompts/ as JSONL
    openllm tasks eval outputs/chain/sft --task openllm:word-problems --k 8   # greedy exact match and pass@8
"""

import json

from ..models.loading import add_loading_arguments, load_causal_lm
from ..tasks import REGISTRY, SYNTHETIC_PREFIX, get_task, write_datasets
from .answers import evaluate_reasoning


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="the task names, for `dataset_name:` in recipes and for --task")
    write = sub.add_parser("write", help="write a task's train and test splits as JSONL, one folder per stage format")
    write.add_argument("task", help="a task name (see `openllm tasks list`)")
    write.add_argument("--output-dir", required=True)
    write.add_argument("--train-size", type=int, default=2000)
    write.add_argument("--test-size", type=int, default=200)
    write.add_argument("--format", choices=("conversational", "standard"), default="conversational")
    write.add_argument("--seed", type=int, default=0)
    score = sub.add_parser("eval", help="greedy exact match (and pass@k) of a model on a task's held-out questions")
    score.add_argument("model", help="model folder or Hub id")
    score.add_argument("--task", default="openllm:reasoning", help="a task name (default openllm:reasoning)")
    score.add_argument("--n", type=int, default=200, help="held-out questions (default 200)")
    score.add_argument("--k", type=int, default=0, help="also sample k completions per question for pass@k")
    score.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for pass@k")
    score.add_argument("--max-new-tokens", type=int, default=96)
    add_loading_arguments(score)


def run(args) -> int:
    if args.action == "list":
        for name, task in REGISTRY.items():
            print(f"{SYNTHETIC_PREFIX}{name:<16} {task.family}")
    elif args.action == "write":
        written = write_datasets(args.output_dir, args.task, args.train_size, args.test_size, args.format, args.seed)
        for folder, path in written.items():
            print(f"{folder:<10} {path}/{{train,test}}.jsonl")
    else:
        task = get_task(args.task)
        model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=args.dtype, revision=args.revision,
                                          trust_remote_code=args.trust_remote_code)
        examples = task.format(task.examples("test", args.n, 0), "rlhf")
        print(json.dumps(evaluate_reasoning(model, tokenizer, task, examples, args.max_new_tokens, args.k,
                                            args.temperature)))
    return 0
