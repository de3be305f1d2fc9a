"""TRL's GRPO with `tools=[calculator]` reads the calls our chat template teaches, runs them and continues the
completion after the result: a tiny model taught one call-and-answer conversation goes through the whole loop."""

import pytest
import torch
import transformers
from datasets import Dataset
from packaging.version import Version
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from openllm import OpenLLMForCausalLM
from openllm.tools import TOOLS

CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*7"}}}
CONVERSATION = [{"role": "user", "content": "What is 12*7?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "name": "calculator", "content": "84"},
                {"role": "assistant", "content": "84"}]


@pytest.mark.skipif(Version(transformers.__version__) < Version("5.13.0"),
                    reason="TRL reads tool calls with transformers' response_template parser (>= 5.13)")
def test_grpo_runs_the_calculator(tmp_path, tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = OpenLLMForCausalLM.from_pretrained(tiny_base)
    calls = []

    def calculator(expression: str) -> str:
        calls.append(expression)
        return TOOLS["calculator"].function(expression)

    # the prompt shows the tool as the built-in one: same name, signature and docstring
    calculator.__doc__ = TOOLS["calculator"].function.__doc__
    out = tokenizer.apply_chat_template(CONVERSATION, tools=[calculator], return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    labels = out["input_ids"].masked_fill(out["assistant_masks"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):  # memorise the conversation's assistant turns
        model(input_ids=out["input_ids"], labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def reward(completions, **kwargs):
        return [float(c[-1]["content"] == "84") for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_steps=1,
                      max_completion_length=96, temperature=0.05, learning_rate=1e-6, beta=0.0, use_cpu=True,
                      bf16=False, router_aux_loss_coef=0.0, report_to="none", save_strategy="no", logging_steps=1,
                      max_tool_calling_iterations=2)
    dataset = Dataset.from_list([{"prompt": CONVERSATION[:1]}] * 2)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward, args=args,
                          train_dataset=dataset, tools=[calculator])
    trainer.train()
    assert calls == ["12*7", "12*7"]
    logged = trainer.state.log_history[0]
    assert logged["tools/call_frequency"] == 1 and logged["tools/failure_frequency"] == 0 and logged["reward"] == 1
