"""The post-training chain, offline on a CPU: untrained small OpenLLM → SFT → reward model → DPO → RLHF (GRPO),
on the synthetic checkable tasks (addition, parity, reversal; held-out questions never seen in training).

    python benchmarks/run.py --only posttrain [--write-readme]

Each stage runs its recipe (`recipes/<stage>.py` with the `*_debug.yaml` config and the overrides below) and the
table reports the numbers each recipe wrote in training_summary.json, before → after.
"""

import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# a model between the `tiny` and `small` presets: big enough to learn the tasks in a few minutes on two cores
MODEL = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
COMMON = dict(disable_tqdm="true", max_eval_samples=150, logging_steps=25)
STAGES = {
    "sft": dict(max_steps=300, per_device_train_batch_size=32, learning_rate=3e-3, max_train_samples=4000),
    "reward": dict(max_steps=150, per_device_train_batch_size=32, learning_rate=2e-3, max_train_samples=4000),
    "dpo": dict(max_steps=60, per_device_train_batch_size=32, learning_rate=5e-5, beta=0.1, max_train_samples=4000),
    "rlhf": dict(max_steps=12, per_device_train_batch_size=32, num_generations=8, learning_rate=2e-5,
                 reward_funcs=["accuracy"], logging_steps=3, max_eval_samples=150),
}


def _recipe(stage):
    spec = importlib.util.spec_from_file_location(f"recipe_{stage}", ROOT / "recipes" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage(stage, **overrides) -> tuple[dict, float]:
    recipe = _recipe(stage)
    argv = ["--config", str(ROOT / "recipes" / f"{stage}_debug.yaml")]
    for key, value in {**COMMON, **overrides}.items():
        argv += [f"--{key}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
    start = time.perf_counter()
    args = recipe.make_parser().parse_args_and_config(argv)
    recipe.main(*args)
    seconds = time.perf_counter() - start
    return json.loads((Path(args[1].output_dir) / "training_summary.json").read_text()), seconds


def per_task_accuracy(folder, n=150) -> dict:
    """Greedy exact-match accuracy on each task's held-out questions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openllm.data.post_training import TASKS, format_examples, make_task_examples
    from openllm.training.posttrain import answer_accuracy

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scores = {}
    for task in TASKS:
        rows = format_examples(make_task_examples((task,), n, "test", seed=1), "rlhf")
        scores[task] = answer_accuracy(model, tokenizer, [r["prompt"] for r in rows], [r["answer"] for r in rows])
    return scores


def main(write_readme: bool = False):
    import torch

    from openllm.training.posttrain import init_base

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench-posttrain-"))
    base, sft, rm, dpo, rlhf = (str(work / name) for name in ("base", "sft", "reward", "dpo", "rlhf"))
    model, _ = init_base(base, "tiny", **MODEL)
    params = model.num_parameters()
    tasks_before = per_task_accuracy(base)

    s_sft, t_sft = run_stage("sft", model_name_or_path=base, output_dir=sft, **STAGES["sft"])
    tasks_sft = per_task_accuracy(sft)
    s_rm, t_rm = run_stage("reward", model_name_or_path=sft, output_dir=rm, **STAGES["reward"])
    s_dpo, t_dpo = run_stage("dpo", model_name_or_path=sft, output_dir=dpo, **STAGES["dpo"])
    tasks_dpo = per_task_accuracy(dpo)
    s_rl, t_rl = run_stage("rlhf", model_name_or_path=dpo, output_dir=rlhf, reward_model_name_or_path=rm,
                           **STAGES["rlhf"])
    tasks_rl = per_task_accuracy(rlhf)

    m_sft, m_rm, m_dpo, m_rl = (s["metrics"] for s in (s_sft, s_rm, s_dpo, s_rl))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [
        ("SFT", STAGES["sft"], t_sft, [
            ("completion loss (held-out)", f"{m_sft['initial_eval_loss']:.3f}", f"{m_sft['eval_loss']:.3f}"),
            ("exact-match accuracy (held-out)", pct(m_sft["initial_eval_answer_accuracy"]),
             pct(m_sft["eval_answer_accuracy"]))]),
        ("Reward model", STAGES["reward"], t_rm, [
            ("pairwise accuracy, chosen > rejected (held-out)", pct(m_rm["initial_eval_accuracy"]),
             pct(m_rm["eval_accuracy"])),
            ("mean margin", f"{m_rm['initial_eval_margin']:.3f}", f"{m_rm['eval_margin']:.3f}")]),
        ("DPO", STAGES["dpo"], t_dpo, [
            ("preference accuracy (held-out)", pct(m_dpo["initial_eval_rewards/accuracies"]),
             pct(m_dpo["eval_rewards/accuracies"])),
            ("reward margin (held-out)", f"{m_dpo['initial_eval_rewards/margins']:.3f}",
             f"{m_dpo['eval_rewards/margins']:.3f}"),
            ("exact-match accuracy (held-out)", pct(m_dpo["initial_eval_answer_accuracy"]),
             pct(m_dpo["eval_answer_accuracy"]))]),
        ("RLHF (GRPO)", STAGES["rlhf"], t_rl, [
            ("mean reward (reward model + accuracy), first → last step", f"{m_rl['initial_reward']:.3f}",
             f"{m_rl['final_reward']:.3f}"),
            ("exact-match accuracy (held-out)", pct(m_rl["initial_eval_answer_accuracy"]),
             pct(m_rl["eval_answer_accuracy"]))]),
    ]
    lines = [
        f"Post-training chain on the synthetic checkable tasks (`openllm:mix`), untrained "
        f"{params / 1e6:.2f}M-parameter OpenLLM ({MODEL['num_hidden_layers']} layers, hidden "
        f"{MODEL['hidden_size']}), CPU only, offline. {machine()}.",
        "",
        "| stage | steps × batch | wall time | metric | before | after |",
        "|---|---|---|---|---|---|",
    ]
    for stage, cfg, seconds, metrics in rows:
        for i, (name, before, after) in enumerate(metrics):
            lead = (f"| {stage} | {cfg['max_steps']} × {cfg['per_device_train_batch_size']} | {seconds:.0f} s "
                    if i == 0 else "| | | ")
            lines.append(f"{lead}| {name} | {before} | {after} |")
    lines += ["", "The RLHF rewards are the first and last logged values (each the mean of 3 steps, 12 prompts × 8 "
              "samples), so they are noisy; the task accuracies are the better before/after measure.",
              "", "Held-out exact-match accuracy per task after each stage:", "",
              "| task | untrained | SFT | DPO | RLHF |", "|---|---|---|---|---|"]
    for task in tasks_before:
        lines.append(f"| {task} | {pct(tasks_before[task])} | {pct(tasks_sft[task])} | {pct(tasks_dpo[task])} | "
                     f"{pct(tasks_rl[task])} |")
    markdown = "\n".join(lines)
    print(markdown)
    if write_readme:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from readme import write_section

        write_section("posttrain", markdown)
    return markdown


def machine() -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme import machine_description

    return machine_description()


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
