"""Tiny byte-level BPE tokenizers and random OpenLLM checkpoints, saved as model folders, for the export tests."""

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import openllm

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the tokens before it.",
    "Exported models must produce the same greedy tokens as PyTorch does!",
    "Numbers like 3.14159, 2718 and 42 appear in text, as do symbols: @#%&*().",
    "Ünïcödé, 東京, naïve café — bytes keep every character representable.",
] * 20


def make_tokenizer(vocab_size: int = 384, split_regex: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE; words split by GPT-2's regex (inside ByteLevel), or by `split_regex` when given."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_regex is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # PreTrainedTokenizerFast (not TokenizersBackend) so transformers 4.57 loads the folder too
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_input_names=["input_ids", "attention_mask"])


def make_checkpoint(path, preset="tiny", tokenizer=None, **overrides):
    """A random model and its tokenizer in `path`. The wide init and untied head make greedy decoding wander over
    the vocabulary with top-2 logit gaps around 1e-2, far above the ~1e-6 differences between runtimes, instead of
    repeating one token."""
    tokenizer = tokenizer or make_tokenizer()
    overrides = {"initializer_range": 0.1, "tie_word_embeddings": False, **overrides}
    config = openllm.get_preset_config(preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       **overrides)
    torch.manual_seed(0)
    model = openllm.OpenLLMForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
