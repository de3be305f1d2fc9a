import json

import pytest
from helpers.tiny_lm import CORPUS


@pytest.fixture(scope="session")
def tokenizer(lm_tokenizer):
    return lm_tokenizer


@pytest.fixture(scope="session")
def eval_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.jsonl"
    rows = [{"text": t, "id": i} for i, t in enumerate(CORPUS[:6])] + [{"text": "   ", "id": 6}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models trained here on the checkable synthetic tasks ("Question: ...\nAnswer: X</s>"), a few seconds each
# ---------------------------------------------------------------------------------------------------------------------
QA_STEPS = 120


def qa_text(example) -> str:
    return f"Question: {example['prompt']}\nAnswer: {example['answer']}"


def train_qa_model(tokenizer, seed: int, steps: int = QA_STEPS, batch_size: int = 32, lr: float = 3e-3):
    import random

    import torch

    import openllm
    from openllm.tasks import make_task_examples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread, and the machine is shared
    try:
        torch.manual_seed(seed)
        config = openllm.get_preset_config("tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = openllm.OpenLLMForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        encoded = [[tokenizer.bos_token_id] + tokenizer(qa_text(e), add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id] for e in make_task_examples(n=3000, split="train")]
        rng = random.Random(seed)
        for _ in range(steps):
            batch = rng.sample(encoded, batch_size)
            width = max(map(len, batch))
            ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
            labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
            model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def qa_models(task_tokenizer, tmp_path_factory):
    """Three folders of the same tiny model trained with different seeds (an ensemble of checkpoints)."""
    folders = []
    for seed in range(3):
        folder = tmp_path_factory.mktemp(f"qa-model-{seed}")
        train_qa_model(task_tokenizer, seed).save_pretrained(folder)
        task_tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="session")
def qa_held_out(tmp_path_factory):
    """Held-out question/answer texts (questions never seen in training) as a .jsonl file."""
    from openllm.tasks import make_task_examples

    path = tmp_path_factory.mktemp("qa-data") / "held_out.jsonl"
    rows = [{"text": qa_text(e)} for e in make_task_examples(n=120, split="test")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
