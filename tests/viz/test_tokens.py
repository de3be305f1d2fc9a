import pytest

from openllm.data.tokenizer import train_tokenizer
from openllm.viz.tokens import encode_with_pieces, label

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "naive cafe"] * 20
PROBE = "def  add(x):\n\treturn x  + 1 café 🙂"


@pytest.mark.parametrize("kind, vocab_size", [("bpe", 300), ("unigram", 60), ("char", 100)])
def test_pieces_concatenate_to_the_text_for_every_tokenizer_kind(kind, vocab_size):
    tokenizer = train_tokenizer(TEXTS, vocab_size=vocab_size, tokenizer_type=kind, show_progress=False)
    ids, pieces = encode_with_pieces(tokenizer, PROBE)
    assert ids == tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    assert len(pieces) == len(ids) and "".join(pieces) == PROBE
    ids, pieces = encode_with_pieces(tokenizer, PROBE, prefix_token=True)
    assert ids[0] == tokenizer.bos_token_id and pieces[0] == "<|bos|>" and "".join(pieces[1:]) == PROBE


def test_labels_show_whitespace_and_empty_pieces():
    assert [label(p) for p in (" a", "\n", "\t", "")] == ["·a", "↵", "⇥", "∅"]
    with pytest.raises(ValueError, match="empty"):
        encode_with_pieces(train_tokenizer(TEXTS, vocab_size=300, show_progress=False), "")
