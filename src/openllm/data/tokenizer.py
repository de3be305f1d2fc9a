"""Train a tokenizer with 🤗 tokenizers and save it as a `PreTrainedTokenizerFast` folder.

    openllm tokenizer train --corpus builtin:python-docs --vocab-size 8000 --type bpe --output tok/

Three kinds:
- `bpe` (default): byte-level BPE (GPT-2 style). Every string encodes and decodes back exactly; no unknown tokens.
- `unigram`: SentencePiece-style Unigram LM over `▁`-marked words; characters never seen in training become `<|unk|>`.
- `char`: one token per character, for small experiments; unseen characters become `<|unk|>`.

Every tokenizer gets the same special tokens (ids 0-6: pad, bos, eos, unk, then the chat roles system, user and
assistant; ids 7-11, added with tool calling: the tool role and the tool-call markers) and a chat template
(`CHAT_TEMPLATE`) with `{% generation %}` markers, so TRL's `assistant_only_loss` works out of the box. The folder
loads with `AutoTokenizer.from_pretrained` on transformers 4.57 and 5.x.

Tool calling follows Hermes/Qwen: the template lists the tools offered in the system turn (a short line each, not
their JSON schemas: tiny models have short contexts), the assistant calls one with
`<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>` (trained on, like any assistant
text), and the result comes back as a `tool` turn, `<|tool|>\n<tool_response>84</tool_response>` (not trained on).
The markers are added tokens that are not special, so `decode(..., skip_special_tokens=True)` keeps them for parsing.
`RESPONSE_TEMPLATE` tells transformers' `parse_response` (and so TRL's GRPO `tools=`) where the calls are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Iterable, Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .corpus import load_corpus

logger = logging.getLogger(__name__)

TOKENIZER_TYPES = ("bpe", "unigram", "char")
SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>", "unk_token": "<|unk|>"}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"
TOOL_TOKENS = [TOOL_CALL_START, TOOL_CALL_END, TOOL_RESPONSE_START, TOOL_RESPONSE_END]
# the order fixes the ids; tokens are only ever appended, so older tokenizers keep theirs
ALL_SPECIAL_TOKENS = [*SPECIAL_TOKENS.values(), *ROLE_TOKENS, *TOOL_TOKENS]

# The template of tokenizers trained before tool calling. `CHAT_TEMPLATE` renders every conversation it accepts to the
# same bytes, so a model trained with it answers as before.
LEGACY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unknown role ' + message['role'] + ': use system, user or assistant.') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# <|user|>\n{content}<|eos|><|assistant|>\n{content}<|eos|>... Every turn ends with EOS, the token that also
# separates pretraining documents, so generation stops at the end of the assistant's turn, a tool call included.
# With `tools`, the system turn (the conversation's own, or one of its own) ends with "Tools:" and a line per tool,
# `calculator(expression): Evaluate an arithmetic expression.`. A JSON schema would take most of a tiny model's context
# (276 of the synthetic tasks' tokens for the calculator's, against 256 positions), and TRL's GRPO renders the tools
# into every prompt. An assistant turn is its content, then each call as
# <tool_call>{"name": ..., "arguments": ...}</tool_call> (arguments given as a JSON string are written as they are),
# all inside {% generation %}; a tool turn is <|tool|>\n<tool_response>{content}</tool_response><|eos|>, outside it.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|system|>\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
    "{{- 'Tools:' -}}"
    "{%- for tool in tools -%}"
    "{%- set fn = tool['function'] if tool['function'] is defined else tool -%}"
    "{%- set parameters = fn['parameters']['properties'] if fn['parameters'] is mapping"
    " and fn['parameters']['properties'] is mapping else {} -%}"
    "{{- '\\n' + fn['name'] + '(' + (parameters | list | join(', ')) + ')' -}}"
    "{%- if fn['description'] -%}{{- ': ' + fn['description'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('Unknown role ' + message['role'] + ': use system, user, assistant or tool.') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] if message['content'] is string else '' -}}"
    "{%- for tool_call in message['tool_calls'] or [] -%}"
    "{%- set call = tool_call['function'] if tool_call['function'] is defined else tool_call -%}"
    "{%- set arguments = call['arguments'] if call['arguments'] is defined else {} -%}"
    "{{- '<tool_call>{\"name\": ' + (call['name'] | tojson) + ', \"arguments\": ' -}}"
    "{{- (arguments if arguments is string else arguments | tojson) + '}</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endgeneration -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|tool|>\\n<tool_response>' -}}"
    "{{- message['content'] if message['content'] is string else message['content'] | tojson -}}"
    "{{- '</tool_response>' + eos_token -}}"
    "{%- elif not (loop.first and tools and message['role'] == 'system') -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# transformers' `response_template` (>= 5.13) for `tokenizer.parse_response` and TRL: the assistant's reply starts
# after the generation prompt, each <tool_call> holds one JSON call, and the content ends at EOS.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>\n",
    "fields": {
        "tool_calls": {"open": TOOL_CALL_START, "close_pattern": re.escape(TOOL_CALL_END) + r"\s*", "repeats": True,
                       "content": "json", "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": re.escape(SPECIAL_TOKENS["eos_token"]) + r"\s*", "content": "text"},
    },
}


def enable_tool_calling(tokenizer) -> bool:
    """Give a tokenizer with OpenLLM's chat template (either version) the tool-capable one and `RESPONSE_TEMPLATE`;
    return whether it has them now. Conversations without tools render as before. A tokenizer trained before tool
    calling has no tool tokens: the markers are then encoded as plain text, which its model never saw."""
    if tokenizer.chat_template not in (LEGACY_CHAT_TEMPLATE, CHAT_TEMPLATE):
        return False
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    return True


def build_tokenizer(tokenizer_type: str = "bpe"):
    """An untrained `tokenizers.Tokenizer` of the given kind, with its trainer factory."""
    if tokenizer_type == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

        def trainer(vocab_size, min_frequency, show_progress):
            return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                                       special_tokens=ALL_SPECIAL_TOKENS,
                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif tokenizer_type == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")

        def trainer(vocab_size, min_frequency, show_progress):
            return trainers.UnigramTrainer(vocab_size=vocab_size, show_progress=show_progress,
                                           special_tokens=ALL_SPECIAL_TOKENS, unk_token=SPECIAL_TOKENS["unk_token"])
    elif tokenizer_type == "char":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()

        def trainer(vocab_size, min_frequency, show_progress):
            return trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                             show_progress=show_progress, special_tokens=ALL_SPECIAL_TOKENS)
    else:
        raise ValueError(f"Unknown tokenizer type {tokenizer_type!r}; choose one of {', '.join(TOKENIZER_TYPES)}.")
    return tok, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 32000, tokenizer_type: str = "bpe",
                    min_frequency: int = 2, output_dir: Optional[str] = None, show_progress: bool = True,
                    length: Optional[int] = None, model_max_length: Optional[int] = None):
    """Train a tokenizer on `texts` and return it as a `PreTrainedTokenizerFast` (saved to `output_dir` if given).

    `vocab_size` counts every token, special tokens included: byte-level BPE reaches it exactly when the corpus
    has enough distinct merges; `char` keeps at most that many characters (the most frequent ones).
    `length` (the number of texts) only sizes the progress bar.
    """
    minimum = len(ALL_SPECIAL_TOKENS) + (256 if tokenizer_type == "bpe" else 1)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for a {tokenizer_type!r} tokenizer: it needs at least "
                         f"{minimum} ({len(ALL_SPECIAL_TOKENS)} special tokens"
                         + (" + 256 bytes)." if tokenizer_type == "bpe" else " + 1 token)."))
    tok, make_trainer = build_tokenizer(tokenizer_type)
    tok.train_from_iterator(texts, trainer=make_trainer(vocab_size, min_frequency, show_progress), length=length)
    tokenizer = wrap_tokenizer(tok, model_max_length=model_max_length)
    if output_dir is not None:
        save_tokenizer(tokenizer, output_dir)
    return tokenizer


def wrap_tokenizer(tok, model_max_length: Optional[int] = None):
    """A `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast` with OpenLLM's special tokens and chat template."""
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    # trained as special tokens (for their fixed ids), the tool markers become ordinary added tokens, which decoding
    # with `skip_special_tokens=True` keeps
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS if t in tok.get_vocab()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, additional_special_tokens=ROLE_TOKENS,
                                        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
                                        model_input_names=["input_ids", "attention_mask"], **kwargs)
    tokenizer.response_template = RESPONSE_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer, output_dir: str) -> None:
    """`save_pretrained`, then rewrite tokenizer_config.json in the form both transformers 4.57 and 5.x load.

    transformers 5 writes `"tokenizer_class": "TokenizersBackend"` and a list-valued `extra_special_tokens`, which
    4.57 cannot read; the class both know is `PreTrainedTokenizerFast`.
    """
    tokenizer.save_pretrained(output_dir)
    path = os.path.join(output_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config.pop("extra_special_tokens", None)
    config.update(
        tokenizer_class="PreTrainedTokenizerFast",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[t for t in ROLE_TOKENS if t in tokenizer.get_vocab()],
        **{k: getattr(tokenizer, k) for k in SPECIAL_TOKENS if getattr(tokenizer, k, None) is not None},
    )
    if tokenizer.chat_template == CHAT_TEMPLATE:  # transformers 4.57 does not save it itself
        config["response_template"] = RESPONSE_TEMPLATE
    template_file = os.path.join(output_dir, "chat_template.jinja")
    if getattr(tokenizer, "chat_template", None) and not os.path.exists(template_file):
        config["chat_template"] = tokenizer.chat_template
    with open(path, "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def portable_tokenizer_config(folder) -> None:
    """Make a tokenizer folder saved by transformers 5 (`"tokenizer_class": "TokenizersBackend"`) load on 4.57 too,
    as the `PreTrainedTokenizerFast` it is. Tokenizers of other classes are left as they are."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        config = json.load(f)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        extra = config.pop("extra_special_tokens", None)
        if isinstance(extra, list):
            config.setdefault("additional_special_tokens", extra)
        with open(path, "w") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")


def tokenizer_hash(tokenizer) -> str:
    """A short hash of what the tokenizer does (its whole `tokenizer.json`), to tell a changed one from the same."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# CLI: openllm tokenizer train ...


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("train", help="train a tokenizer on a corpus")
    p.add_argument("--corpus", required=True,
                   help="local file, folder or glob (.txt .md .jsonl .json .parquet .csv), a Hub dataset id, "
                        "or builtin:python-docs")
    p.add_argument("--output", required=True, help="folder to save the tokenizer to")
    p.add_argument("--type", dest="tokenizer_type", choices=TOKENIZER_TYPES, default="bpe")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--min-frequency", type=int, default=2, help="ignored by unigram")
    p.add_argument("--text-column", default="text", help="column with the text in Hub/json/parquet/csv data")
    p.add_argument("--dataset-config", default=None, help="Hub dataset configuration name")
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--eval-fraction", type=float, default=0.01,
                   help="documents held out (as in pretraining): excluded from tokenizer training, used to report "
                        "compression")
    p.add_argument("--num-proc", type=int, default=None)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    corpus = load_corpus(args.corpus, args.text_column, config_name=args.dataset_config,
                         eval_fraction=args.eval_fraction, max_documents=args.max_documents, num_proc=args.num_proc)
    texts = corpus.train["text"]
    tokenizer = train_tokenizer(texts, args.vocab_size, args.tokenizer_type, args.min_frequency,
                                output_dir=args.output, length=len(texts))
    print(f"Saved a {args.tokenizer_type} tokenizer with {len(tokenizer):,} tokens to {args.output} "
          f"(trained on {len(texts):,} documents).")
    if corpus.eval is not None:
        held_out = list(corpus.eval["text"])
        n_bytes = sum(len(t.encode("utf-8")) for t in held_out)
        n_tokens = sum(len(x) for x in tokenizer(held_out, add_special_tokens=False)["input_ids"])
        print(f"Held-out compression: {n_bytes / n_tokens:.2f} bytes/token over {len(held_out):,} documents.")
    return 0


__all__ = ["TOKENIZER_TYPES", "SPECIAL_TOKENS", "ROLE_TOKENS", "TOOL_TOKENS", "TOOL_CALL_START", "TOOL_CALL_END",
           "TOOL_RESPONSE_START", "TOOL_RESPONSE_END", "ALL_SPECIAL_TOKENS", "CHAT_TEMPLATE", "LEGACY_CHAT_TEMPLATE",
           "RESPONSE_TEMPLATE", "enable_tool_calling", "train_tokenizer", "wrap_tokenizer", "save_tokenizer",
           "build_tokenizer", "portable_tokenizer_config", "tokenizer_hash"]
