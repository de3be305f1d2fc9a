import json

import pytest
from transformers import AutoTokenizer

from openllm.data.corpus import python_docs_corpus
from openllm.data.tokenizer import ALL_SPECIAL_TOKENS, train_tokenizer
from openllm_cli import main as cli_main

SAMPLES = [
    "Hello, world!",
    "  leading, trailing and   repeated   spaces  ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines\n",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "héllo wörld — naïve café, ½ ≠ ∞",
    "中文 日本語 한국어 العربية עברית",
    "emoji 🤗🚀👩‍👩‍👧 and flags 🇫🇷, skin tones 👍🏽",
    "combining e\u0301 and zero\u200bwidth, a null \x00 byte",
]


@pytest.fixture(scope="module")
def corpus():
    return list(python_docs_corpus(packages=["json", "textwrap"])["text"])


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(corpus, vocab_size=600, output_dir=str(out), show_progress=False)
    return out


def test_byte_level_bpe_round_trips_exactly(bpe):
    tokenizer = AutoTokenizer.from_pretrained(bpe)
    for text in SAMPLES:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_saved_folder_loads_with_fixed_special_tokens(bpe):
    tokenizer = AutoTokenizer.from_pretrained(bpe)
    assert len(tokenizer) == 600  # the requested vocab size, special tokens included
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(12)] == ALL_SPECIAL_TOKENS
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert list(tokenizer("a b")) == ["input_ids", "attention_mask"]
    config = json.loads((bpe / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_input_names"] == ["input_ids", "attention_mask"]


def test_chat_template(bpe):
    tokenizer = AutoTokenizer.from_pretrained(bpe)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|system|>\nBe brief.<|eos|><|user|>\nHi<|eos|><|assistant|>\nHello!<|eos|>")
    assert tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|user|>\nHi<|eos|><|assistant|>\n")
    # {% generation %} marks what TRL's assistant-only loss trains on
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(kept) == "Hello!<|eos|>"
    with pytest.raises(Exception, match="Unknown role bot"):
        tokenizer.apply_chat_template([{"role": "bot", "content": "x"}], tokenize=False)


def test_char_and_unigram(corpus):
    chars = sorted(set("".join(corpus)))
    char = train_tokenizer(corpus, vocab_size=10_000, tokenizer_type="char", min_frequency=1, show_progress=False)
    assert len(char) == len(ALL_SPECIAL_TOKENS) + len(chars)
    text = corpus[3][:200]
    assert char(text)["input_ids"] == char.convert_tokens_to_ids(list(text))
    assert char.decode(char(text)["input_ids"]) == text
    assert len(train_tokenizer(corpus, vocab_size=40, tokenizer_type="char", show_progress=False)) == 40

    unigram = train_tokenizer(corpus, vocab_size=500, tokenizer_type="unigram", show_progress=False)
    assert 100 < len(unigram) <= 500
    assert unigram.decode(unigram("Serialize obj to a JSON formatted str.")["input_ids"]) == (
        "Serialize obj to a JSON formatted str.")


def test_vocab_size_and_type_errors(corpus):
    with pytest.raises(ValueError, match="vocab_size=100 is too small for a 'bpe' tokenizer: it needs at least 268"):
        train_tokenizer(corpus, vocab_size=100)
    with pytest.raises(ValueError, match="Unknown tokenizer type 'wordpiece'"):
        train_tokenizer(corpus, tokenizer_type="wordpiece")


def test_cli(tmp_path, capsys):
    rows = [{"body": f"Line {i}: the quick brown fox jumps over {i % 7} lazy dogs."} for i in range(200)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = cli_main(["tokenizer", "train", "--corpus", str(tmp_path / "docs.jsonl"), "--text-column", "body",
                   "--vocab-size", "300", "--output", str(tmp_path / "tok")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"Saved a bpe tokenizer with 300 tokens to {tmp_path / 'tok'} (trained on 198 documents)." in printed
    assert "Held-out compression:" in printed and "over 2 documents" in printed
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) == 300
