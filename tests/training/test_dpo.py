"""DPO recipe: on its training pairs, preference accuracy and reward margin rise (full and LoRA)."""

import pytest
from helpers.recipes import run_recipe, write_jsonl

from openllm.data.post_training import format_examples
from openllm.tasks import make_task_examples


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """32 preference pairs used both to train and to evaluate: DPO must learn to prefer them."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = format_examples(make_task_examples(n=32, seed=3), "dpo")
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows)
    return folder


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_raises_preference_accuracy_and_margin(tmp_path, tiny_base, pairs, lora):
    extra = dict(use_peft="true", lora_r=8, lora_alpha=16, learning_rate=1e-2) if lora else {}
    summary, trainer = run_recipe("dpo", "dpo_debug", model_name_or_path=tiny_base, output_dir=tmp_path / "dpo",
                                  dataset_name=pairs, max_steps=16, logging_steps=4, answer_accuracy="false",
                                  **{"learning_rate": 1e-3, **extra})
    m = summary["metrics"]
    assert summary["stage"] == "dpo" and summary["training_args"]["beta"] == 0.1
    # at the start policy == reference: every implicit reward is 0, no pair is ranked right
    assert m["initial_eval_rewards/margins"] == 0 and m["initial_eval_rewards/accuracies"] == 0
    assert m["eval_rewards/accuracies"] >= 0.8 and m["eval_rewards/margins"] > 0.1
    assert m["eval_loss"] < m["initial_eval_loss"]
    # the policy's own preference (chosen likelier than rejected), measured without the reference, rises too
    assert m["eval_preference_accuracy"] > m["initial_eval_preference_accuracy"], m
    # TRL's reference: a frozen copy for full DPO, the adapter switched off for LoRA
    assert (trainer.ref_model is None) == lora


def test_completion_logprobs_ignore_padding_and_the_prompt(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openllm.training.posttrain import completion_logprobs

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Reverse abcdef."}]]
    completions = [[{"role": "assistant", "content": "5"}], [{"role": "assistant", "content": "fedcba, done"}]]
    batched = completion_logprobs(model, tokenizer, prompts, completions)
    for prompt, completion, score in zip(prompts, completions, batched):  # one at a time: no padding at all
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(tokenizer.apply_chat_template(prompt + completion, tokenize=False), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logps = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        assert score == pytest.approx(logps[start - 1:].sum().item(), abs=1e-4)
