"""A tiny model folder made on the spot: a byte-level BPE tokenizer trained with `tokenizers` (with a chat template)
and a `tiny`-preset OpenLLM model with random weights."""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import openllm

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, serving models is fun",
          "a language model predicts the next token", "batching many requests together saves time"] * 50
SPECIAL = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tiny_model(folder, initializer_range: float = 0.2, chat_template: bool = True):
    tokenizer = Tokenizer(models.BPE())
    # no initial byte alphabet: every token decodes to whole ASCII characters, whatever order they come in
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"])
    tokenizer.chat_template = CHAT_TEMPLATE if chat_template else None
    torch.manual_seed(0)
    # a wider init than training uses, so the random model's greedy continuations vary instead of repeating
    config = openllm.get_preset_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id, initializer_range=initializer_range)
    model = openllm.OpenLLMForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer
