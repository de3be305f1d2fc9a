"""Token pieces of a text that read back as the text itself, for labelling pictures."""


def encode_with_pieces(tokenizer, text: str, prefix_token: bool = False) -> tuple[list[int], list[str]]:
    """(token ids, the piece of `text` each token covers). The pieces come from the tokenizer's character offsets, so
    they concatenate back to `text` even where one character spans several byte-level tokens (that character is then
    shown on its first token and the others get ""). With `prefix_token`, a BOS (or EOS) token is put first, as the
    context from which the first real token is predicted; its piece is its own name."""
    if not text:
        raise ValueError("The text is empty; give at least one character.")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    pieces, covered = [], 0
    for _, end in offsets:
        end = max(end, covered)  # a gap before `start` (e.g. a space the pre-tokenizer ate) joins this piece
        pieces.append(text[covered:end])
        covered = end
    if pieces:
        pieces[-1] += text[covered:]  # whitespace a tokenizer may not attribute to any token
    if prefix_token:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("The tokenizer has neither a BOS nor an EOS token to predict the first token from.")
        ids, pieces = [prefix] + ids, [tokenizer.convert_ids_to_tokens(prefix)] + pieces
    return ids, pieces


def label(piece: str) -> str:
    """A piece as an axis label: whitespace made visible."""
    return piece.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·") or "∅"
