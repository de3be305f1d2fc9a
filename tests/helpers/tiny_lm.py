"""Tiny real parts for the evaluation, generation and model-card tests: a byte-level BPE tokenizer trained here and
tiny OpenLLM models saved with `save_pretrained`."""

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model assigns probabilities to sequences of tokens.",
    "Perplexity is the exponential of the mean negative log-likelihood per token.",
    "Bits per byte compare models that use different tokenizers.",
    "Calibration asks whether a model's confidence matches how often it is right.",
    "Café, naïve, façade: UTF-8 counts these letters as two bytes each. 🙂",
] * 4


def train_tokenizer(texts=CORPUS, vocab_size=320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", model_input_names=["input_ids", "attention_mask"])


def save_tiny_model(folder, tokenizer, preset="tiny", seed=0):
    import openllm

    torch.manual_seed(seed)
    config = openllm.get_preset_config(preset, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = openllm.OpenLLMForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
