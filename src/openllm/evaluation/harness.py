"""lm-evaluation-harness on an already-loaded model: lm-eval's `HFLM` wraps our model and tokenizer, so its numbers
and ours come from the same weights in the same process.

    openllm eval MODEL --tasks openllm_heldout,openllm_synthetic_mc,openllm_synthetic_gen --output-dir MODEL
    openllm eval MODEL --tasks hellaswag,arc_easy --limit 200          # Hub tasks: need internet for their data

OpenLLM ships offline tasks in `openllm/evaluation/tasks/` (always on the include path): `openllm_heldout`
(perplexity of held-out texts: the shipped sample or, with `--dataset`, the texts `openllm eval` scores),
`openllm_synthetic_mc` and `openllm_synthetic_gen` (the checkable synthetic tasks). The same folder works with the
`lm_eval` command line: `lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True --tasks
openllm_heldout --include_path $(python -c "import openllm.evaluation.harness as h; print(h.TASKS_DIR)")`.
"""

from pathlib import Path

from ..versions import package_version

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def parse_tasks(tasks) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise ValueError("No lm-eval task given: pass --tasks NAME[,NAME...], e.g. openllm_heldout or hellaswag.")
    return names


def run_lm_eval(model, tokenizer, tasks, *, include_path=None, limit=None, batch_size: int = 8,
                metadata: dict | None = None, num_fewshot: int | None = None, seed: int = 0) -> dict:
    """Run lm-eval `tasks` (names or a comma-separated string) on `model`; returns {"tasks": {task: {metric: value,
    "<metric>_stderr": ...}}, "n_samples", "config", "versions"}. `include_path` adds task folders to OpenLLM's;
    `metadata` is passed to every task (e.g. `data_files` for `openllm_heldout`)."""
    try:  # optional: the eval extra
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError("lm-evaluation-harness is not installed: pip install 'openllm-hf[eval]'") from error

    names = parse_tasks(tasks)
    paths = [str(TASKS_DIR)] + [str(p) for p in ([include_path] if isinstance(include_path, (str, Path))
                                                 else include_path or [])]
    for path in paths[1:]:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--include-path {path} is not a folder of lm-eval task YAMLs.")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of examples per task, got {limit}.")
    # indexing lm-eval's thousands of built-in YAMLs takes a while: only do it when a task is not one of ours
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata or {})
    if any(n not in manager.all_tasks and not n.startswith("openllm_") for n in names):
        manager = TaskManager(include_path=paths, metadata=metadata or {})
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        local = sorted(t for t in manager.all_tasks if t.startswith("openllm_"))
        raise ValueError(f"Unknown lm-eval task(s) {', '.join(unknown)}. OpenLLM's offline tasks: {', '.join(local)}; "
                         "Hub tasks such as hellaswag, arc_easy, gsm8k or wikitext need internet access for their "
                         "data; your own YAMLs go in a folder passed with --include-path.")
    was_training = model.training
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)
    try:
        output = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                         num_fewshot=num_fewshot, log_samples=False, random_seed=seed,
                                         numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    finally:
        model.train(was_training)
    return summarize(output)


def summarize(output: dict) -> dict:
    """The numbers of an lm-eval results dict, without its "metric,filter" keys for the default filter."""
    tasks = {}
    for task, values in output["results"].items():
        metrics = {}
        for key, value in values.items():
            if key == "alias" or not isinstance(value, (int, float)):
                continue
            metric, _, filter_name = key.partition(",")
            metrics[metric if filter_name in ("", "none") else f"{metric}[{filter_name}]"] = value
        tasks[task] = metrics
    return {
        "tasks": tasks,
        "n_samples": {t: v.get("effective", v.get("original")) for t, v in output.get("n-samples", {}).items()},
        "higher_is_better": output.get("higher_is_better", {}),
        "config": {k: output.get("config", {}).get(k) for k in ("limit", "num_fewshot", "batch_size")},
        "versions": output.get("versions", {}),
        "lm_eval_version": output.get("lm_eval_version") or package_version("lm_eval"),
    }


def format_lm_eval(summary: dict) -> str:
    lines = ["", f"lm-evaluation-harness {summary['lm_eval_version']}", f"{'task':<26}{'metric':<18}{'value':>12}",
             "-" * 56]
    for task, metrics in summary["tasks"].items():
        for metric, value in metrics.items():
            if not metric.endswith("_stderr"):
                lines.append(f"{task:<26}{metric:<18}{value:>12.4f}")
    return "\n".join(lines)
