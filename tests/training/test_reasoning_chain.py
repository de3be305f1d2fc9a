"""The reasoning chain (recipes/chain/*.yaml): each config reads the previous stage's output, and (slow, minutes on
two CPU cores) SFT → reward model → DPO → GRPO each improve their own target on held-out questions."""

import json

import pytest
from helpers.recipes import RECIPES, load_recipe, run_recipe

from openllm.data.reasoning import evaluate_reasoning, format_reasoning, make_reasoning_examples

# the quickstart model's shape and tokenizer kind (byte-level BPE, 4096 tokens, trained on the built-in corpus),
# untrained: the chain must not depend on what pretraining happened to learn
QUICKSTART_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512)
RL_TASK = "word-problems"


def _parse(stage):
    config = RECIPES / "chain" / f"{stage}.yaml"
    return load_recipe(stage).make_parser().parse_args_and_config(["--config", str(config)])


def test_chain_configs_parse_and_read_the_previous_stage():
    pretrain_output = load_recipe("pretrain").make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "pretrain_quickstart.yaml")])[2].output_dir
    (sft_script, sft, sft_model), (_, reward, reward_model), (_, dpo, dpo_model), (rl_script, rl, rl_model) = (
        _parse(stage) for stage in ("sft", "reward", "dpo", "rlhf"))
    assert sft_model.model_name_or_path == pretrain_output
    assert reward_model.model_name_or_path == dpo_model.model_name_or_path == sft.output_dir
    assert rl_model.model_name_or_path == dpo.output_dir
    assert rl_script.reward_funcs and len(rl.reward_weights) == len(rl_script.reward_funcs)
    assert sft_script.dataset_name == "openllm:reasoning" and rl_script.dataset_name == f"openllm:{RL_TASK}"
    for stage in ("sft", "reward", "dpo", "rlhf"):
        header = (RECIPES / "chain" / f"{stage}.yaml").read_text().split("\n\n")[0].splitlines()
        assert any(f"recipes/{stage}.py --config recipes/chain/{stage}.yaml" in line for line in header)
        assert any("CPU" in line for line in header)


def _exact_match(folder, task, n=100) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = format_reasoning(make_reasoning_examples((task,), n, "test"), "rlhf")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    return evaluate_reasoning(model, tokenizer, rows, max_new_tokens=64)["exact_match"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from openllm.data.corpus import python_docs_corpus
    from openllm.data.tokenizer import train_tokenizer
    from openllm.training.posttrain import init_base

    folder = tmp_path_factory.mktemp("chain-base")
    tokenizer = train_tokenizer(python_docs_corpus()["text"], vocab_size=4096, show_progress=False)
    init_base(folder, "tiny", tokenizer=tokenizer, **QUICKSTART_SHAPE)
    return folder


@pytest.mark.slow
def test_every_stage_improves_its_own_target(base, tmp_path):
    common = dict(disable_tqdm="true", save_strategy="no", answer_accuracy="false")
    sft, reward, dpo, rlhf = (tmp_path / name for name in ("sft", "reward", "dpo", "rlhf"))

    run_recipe("sft", "chain/sft", model_name_or_path=base, output_dir=sft, **common)
    sft_match = {task: _exact_match(sft, task) for task in ("addition-cot", RL_TASK)}
    assert _exact_match(base, RL_TASK) == 0.0  # the untrained model writes no `####` line
    assert max(sft_match.values()) >= 0.03, sft_match

    summary, _ = run_recipe("reward", "chain/reward", model_name_or_path=sft, output_dir=reward, **common)
    assert summary["metrics"]["eval_accuracy"] >= summary["metrics"]["initial_eval_accuracy"] + 0.1

    summary, _ = run_recipe("dpo", "chain/dpo", model_name_or_path=sft, output_dir=dpo, **common)
    metrics = summary["metrics"]
    assert metrics["eval_rewards/accuracies"] > metrics["initial_eval_rewards/accuracies"] + 0.1, metrics
    dpo_match = _exact_match(dpo, RL_TASK)
    assert dpo_match >= sft_match[RL_TASK] - 0.03

    run_recipe("rlhf", "chain/rlhf", model_name_or_path=dpo, output_dir=rlhf, **common)
    rl_match = _exact_match(rlhf, RL_TASK)
    assert rl_match >= dpo_match + 0.10, json.dumps({"dpo": dpo_match, "rlhf": rl_match})
