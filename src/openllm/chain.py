"""The whole chain in one command: pretraining → SFT → reward model → DPO → RLHF → evaluation → one request to the
served final model. Each stage is its own recipe run on its own YAML (`recipes/pretrain_quickstart.yaml`, then
`recipes/chain/{sft,reward,dpo,rlhf}.yaml`, each reading the previous stage's `output_dir`), in a process of its own,
exactly as `openllm <stage> --config <yaml>` runs it.

    make chain                                  # = openllm chain
    openllm chain --report outputs/chain/chain_report.json

Each stage measures its own target on held-out data before and after training (`initial_*` and final metrics in
its `training_summary.json`); `chain_report.json` gathers them per stage with the input and output model and the
wall time, then held-out exact match of every model on every reasoning task, then the served model's answer to one
held-out question. A killed chain continues where it stopped when run again: finished stages are left as they are,
an interrupted one resumes from its newest checkpoint. A finished chain run again changes nothing.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import atomic
from .evaluation.answers import evaluate_reasoning
from .models.loading import load_causal_lm
from .resources import shipped
from .serving.process import ServerDidNotStart, running_server
from .tasks import reasoning
from .training.arguments import PretrainConfig
from .training.run import read_summary

REPORT = "outputs/chain/chain_report.json"


@dataclass(frozen=True)
class Stage:
    name: str
    config: str
    metric: str  # what the stage exists to improve, measured on held-out data
    key: str  # its name in training_summary.json metrics (`initial_<key>` before training)
    higher_is_better: bool = True


STAGES = (
    Stage("pretrain", "pretrain_quickstart.yaml", "held-out perplexity", "perplexity", higher_is_better=False),
    Stage("sft", "chain/sft.yaml", "held-out exact match", "eval_answer_accuracy"),
    Stage("reward", "chain/reward.yaml", "held-out pairwise accuracy", "eval_accuracy"),
    # TRL's preference accuracy: implicit reward (policy vs the SFT reference) of chosen above rejected; 0 before
    # training, where policy and reference are one model. The row adds the policy's own preference and exact match.
    Stage("dpo", "chain/dpo.yaml", "held-out preference accuracy", "eval_rewards/accuracies"),
    Stage("rlhf", "chain/rlhf.yaml", "held-out exact match", "eval_answer_accuracy"),
)


def add_arguments(parser):
    parser.add_argument("--recipes", default=str(shipped("recipes")),
                        help="folder with pretrain_quickstart.yaml and chain/*.yaml (default: the shipped recipes)")
    parser.add_argument("--report", default=REPORT, help="where chain_report.json goes")
    parser.add_argument("--eval-questions", type=int, default=100, help="held-out questions per task and model")
    parser.add_argument("--no-serve", action="store_true", help="skip the request to the served final model")


def read_yaml(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def stage_row(stage: Stage, config: dict, summary: dict, wall_s: float, interrupted_s: float = 0.0) -> dict:
    """One stage's line of the report. `wall_s` counts every attempt; `interrupted_s` is the part spent in attempts
    that were killed (to within a few seconds: the last heartbeat before the kill)."""
    metrics = summary["metrics"]
    before, after = metrics.get(f"initial_{stage.key}"), metrics.get(stage.key)
    row = {"stage": stage.name, "config": stage.config, "input_model": config.get("model_name_or_path") or "untrained",
           "output_model": config["output_dir"], "metric": stage.metric, "before": before, "after": after,
           "improved": None if before is None or after is None else (after > before) == stage.higher_is_better,
           "wall_time_s": round(wall_s, 1), "interrupted_wall_time_s": round(interrupted_s, 1)}
    if stage.name == "dpo":  # what the policy itself prefers, and answers DPO must not cost
        for name, key in (("policy_preference", "eval_preference_accuracy"), ("exact_match", "eval_answer_accuracy")):
            row[name] = {"before": metrics.get(f"initial_{key}"), "after": metrics.get(key)}
    return row


def changed_settings(config: dict, summary: dict) -> dict:
    """{key: (trained with, YAML now)} for the settings of a finished stage that its YAML has changed since."""
    trained = {**(summary.get("training_args") or {}), "model_name_or_path": summary.get("base_model")}
    return {key: (trained[key], value) for key, value in config.items()
            if key in trained and trained[key] != resolved(key, value, config)
            and not (trained[key] is None and key == "model_name_or_path")}


def resolved(key: str, value, config: dict):
    """A YAML value as the run records it: a WSD decay given as a fraction of the run is recorded in steps."""
    if key != "lr_scheduler_kwargs" or config.get("lr_scheduler_type") != "warmup_stable_decay":
        return value
    names = ("max_steps", "warmup_steps", "lr_scheduler_type")
    return PretrainConfig(output_dir="unused", lr_scheduler_kwargs=value,
                          **{k: config[k] for k in names if k in config}).lr_scheduler_kwargs


def warn_if_changed(stage: Stage, config: dict, summary: dict) -> None:
    changed = changed_settings(config, summary)
    if changed:
        print(f"    {config['output_dir']} was trained with "
              f"{', '.join(f'{k}={old!r}' for k, (old, _) in changed.items())}; {stage.config} now says "
              f"{', '.join(f'{k}={new!r}' for k, (_, new) in changed.items())}. Delete {config['output_dir']} (and "
              f"what was trained from it) to train it again.", flush=True)


HEARTBEAT_S = 2.0  # how often a running stage's wall time so far is written to the report


def run_stage(stage: Stage, config_path: Path, heartbeat) -> float:
    """Run the stage's recipe in its own process; returns its wall time. Raises when it fails. `heartbeat(seconds)`
    is called every few seconds while it runs, so a chain killed mid-stage still knows how long the stage ran."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "openllm", stage.name, "--config", str(config_path)]
    print(f"\n=== {stage.name}: {' '.join(command[1:])}", flush=True)
    process = subprocess.Popen(command)
    while True:
        heartbeat(time.perf_counter() - started)
        try:
            returncode = process.wait(timeout=HEARTBEAT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if returncode:
        raise SystemExit(f"openllm chain: the {stage.name} stage failed (exit {returncode}); fix what it "
                         f"printed and run the chain again: finished stages are kept, this one resumes.")
    return time.perf_counter() - started


def evaluate_models(folders: dict, n: int) -> dict:
    """Held-out exact match (greedy, `#### answer`) of every model on every reasoning task."""
    rows = {task.name: task.format(task.examples("test", n), "rlhf") for task in reasoning.TASKS}
    results = {}
    for name, folder in folders.items():
        model, tokenizer = load_causal_lm(folder, device="cpu")
        results[name] = {task.name: evaluate_reasoning(model, tokenizer, task, rows[task.name], max_new_tokens=64)
                         for task in reasoning.TASKS}
        print(f"  {name:<9} " + "  ".join(f"{task} {r['exact_match']:.0%}" for task, r in results[name].items()),
              flush=True)
    return results


def ask_served_model(folder: str, timeout_s: float = 180) -> dict:
    """Start `openllm serve FOLDER`, ask it one held-out question over the OpenAI chat API, stop it."""
    task = reasoning.WORD_PROBLEMS
    example = task.examples("test", 1)[0]
    body = {"model": folder, "messages": [{"role": "user", "content": example["prompt"]}], "max_tokens": 64,
            "temperature": 0}
    try:
        with running_server(folder, "--no-ui", "--log-level", "warning", timeout_s=timeout_s) as server:
            request = urllib.request.Request(f"{server.url}/v1/chat/completions", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)["choices"][0]["message"]["content"]
    except ServerDidNotStart as error:
        raise SystemExit(f"openllm chain: {error}") from None
    return {"endpoint": "/v1/chat/completions", "question": example["prompt"], "expected": example["answer"],
            "completion": answer, "correct": task.evaluate(example, answer),
            "verified": reasoning.is_verified(example["prompt"], answer, example["answer"])}


def _number(value, stage):
    if value is None:
        return "–"
    return f"{value:.2f}" if stage == "pretrain" else f"{value:.1%}"


def verdict(served: dict) -> str:
    if served.get("verified"):
        return "right, by steps that all check out"
    if served["correct"]:
        return f"the right answer, {served['expected']}, but by steps that do not check out"
    return f"wrong; the answer is {served['expected']}"


def total_wall_time(report: dict) -> float:
    return sum(row["wall_time_s"] for row in report["stages"]) + sum(
        report.get(part, {}).get("wall_time_s", 0.0) for part in ("evaluation", "served"))


def markdown_table(report: dict) -> str:
    """The report as markdown: one row per stage (DPO adds its exact match), then exact match per model and task,
    then the served model's answer."""
    lines = ["| stage | input model | output model | held-out metric | before | after | wall time |",
             "|---|---|---|---|---|---|---|"]
    for row in report["stages"]:
        lines.append(f"| {row['stage']} | `{row['input_model']}` | `{row['output_model']}` | {row['metric']} | "
                     f"{_number(row['before'], row['stage'])} | {_number(row['after'], row['stage'])} | "
                     f"{row['wall_time_s'] / 60:.1f} min |")
        for name, label in (("policy_preference", "the policy's own preference (chosen likelier)"),
                            ("exact_match", "held-out exact match")):
            if name in row:
                lines.append(f"| | | | {label} | {_number(row[name]['before'], row['stage'])} | "
                             f"{_number(row[name]['after'], row['stage'])} | |")
    evaluation = report.get("evaluation", {}).get("exact_match")
    if evaluation:
        first = next(iter(evaluation.values()))
        tasks = list(first)
        lines += ["", f"Greedy exact match of the `####` answer on held-out questions ({first[tasks[0]]['n']} per "
                      "task):", "",
                  "| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        lines += [f"| {name} | " + " | ".join(f"{scores[t]['exact_match']:.0%}" for t in tasks) + " |"
                  for name, scores in evaluation.items()]
    served = report.get("served")
    if served:
        lines += ["", f"The served final model (`openllm serve`, `POST {served['endpoint']}`), asked a held-out "
                      f"question: *{served['question']}* → `{served['completion']!r}` ({verdict(served)})."]
    if report.get("complete"):
        lines += ["", f"Whole chain: {total_wall_time(report) / 60:.1f} min."]
    return "\n".join(lines)


def run(args):
    recipes, report_path = Path(args.recipes), Path(args.report)
    previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
    previous_rows = {row["stage"]: row for row in previous.get("stages", [])}
    for stage in STAGES:
        if not (recipes / stage.config).is_file():
            raise FileNotFoundError(f"{recipes / stage.config} not found: pass --recipes with a folder that "
                                    f"holds pretrain_quickstart.yaml and chain/*.yaml")
    configs = {stage.name: read_yaml(recipes / stage.config) for stage in STAGES}
    summaries = {s.name: read_summary(configs[s.name]["output_dir"]) for s in STAGES}
    if all(summaries.values()) and previous.get("complete"):
        print(markdown_table(previous) + "\n")
        for stage in STAGES:
            warn_if_changed(stage, configs[stage.name], summaries[stage.name])
        print(f"\nThe chain is complete ({report_path}). Nothing was changed.")
        return 0

    def save_report():
        atomic.write_text(report_path, json.dumps(report, indent=2) + "\n")

    report = {"stages": [], "complete": False}
    killed = previous.get("running") or {}  # the stage a killed chain was running, and for how long
    for stage in STAGES:
        config, summary = configs[stage.name], summaries[stage.name]
        carried = killed.get("wall_time_s", 0.0) if killed.get("stage") == stage.name else 0.0
        if summary is None:
            def heartbeat(seconds, name=stage.name, carried=carried):
                report["running"] = {"stage": name, "wall_time_s": round(carried + seconds, 1)}
                save_report()

            wall, interrupted_s = carried + run_stage(stage, recipes / stage.config, heartbeat), carried
            report.pop("running", None)
            summary = read_summary(config["output_dir"])
        else:
            if stage.name in previous_rows:  # finished before: keep the times the chain measured then
                row = previous_rows[stage.name]
                wall, interrupted_s = row["wall_time_s"], row.get("interrupted_wall_time_s", 0.0)
            else:  # finished just as the chain running it was killed: the time that chain saw, else the stage's own
                wall, interrupted_s = carried or summary.get("train_runtime_s") or 0.0, 0.0
            print(f"=== {stage.name}: finished in {config['output_dir']}, kept as it is", flush=True)
            warn_if_changed(stage, config, summary)
        report["stages"].append(stage_row(stage, config, summary, wall, interrupted_s))
        save_report()

    print("\n=== evaluation: held-out exact match", flush=True)
    started = time.perf_counter()
    folders = {s.name: configs[s.name]["output_dir"] for s in STAGES if s.name != "reward"}
    report["evaluation"] = {"exact_match": evaluate_models(folders, args.eval_questions),
                            "wall_time_s": round(time.perf_counter() - started, 1)}
    if not args.no_serve:
        print("\n=== serve: one held-out question to the final model", flush=True)
        started = time.perf_counter()
        report["served"] = ask_served_model(configs["rlhf"]["output_dir"])
        report["served"]["wall_time_s"] = round(time.perf_counter() - started, 1)
        print(f"  Q: {report['served']['question']}\n  A: {report['served']['completion']!r} "
              f"({verdict(report['served'])})")
    report["complete"] = True
    save_report()
    print("\n" + markdown_table(report) + f"\n\nReport: {report_path}")
    return 0


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
