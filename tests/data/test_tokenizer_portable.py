"""A trained tokenizer folder loads and behaves the same on transformers 4.57 (`make test-compat`) and 5.x."""

import json

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from openllm.data.tokenizer import train_tokenizer

TEXTS = ["def f(x):\n    return x + 1\n", "Hello, world! 🤗 naïve café", "The quick brown fox."] * 20


def test_tokenizer_folder_loads_with_auto_tokenizer(tmp_path):
    train_tokenizer(TEXTS, vocab_size=300, output_dir=str(tmp_path), show_progress=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    # 5.x would write "TokenizersBackend", which 4.57 cannot load
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert len(tokenizer) == 300
    text = 'def f():\n  return "🤗"'
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert list(tokenizer("x")) == ["input_ids", "attention_mask"]  # no token_type_ids for generate(**enc)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<|user|>\nHi<|eos|><|assistant|>\nYo<|eos|>"
