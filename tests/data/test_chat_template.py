"""The tool-capable chat template: what it writes for tools, calls and results, what it trains on, that conversations
without tools render as before, and that transformers and TRL read the calls back. Runs on transformers 4.57 too."""

import json

import pytest
import transformers
from packaging.version import Version
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from openllm.data.tokenizer import (
    CHAT_TEMPLATE,
    LEGACY_CHAT_TEMPLATE,
    RESPONSE_TEMPLATE,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    enable_tool_calling,
    save_tokenizer,
)
from openllm.tools import TOOLS, parse_tool_calls, tool_schemas

SYSTEM = {"role": "system", "content": "Be brief."}
CALL = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*7"}}}
CALL_TEXT = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
TOOL_TURN = [{"role": "user", "content": "What is 12*7?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
             {"role": "tool", "name": "calculator", "content": "84"}, {"role": "assistant", "content": "It is 84."}]
TOOL_LINE = "calculator(expression): Evaluate an arithmetic expression."
# conversations without tools, as every OpenLLM model was trained on before tool calling
PLAIN = [
    [{"role": "user", "content": "Hi"}],
    [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
     {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "8"}],
    [{"role": "user", "content": "naïve 🤗\n\ttabs <tool_call> in text"}, {"role": "assistant", "content": ""}],
]
SUPPORTS_RESPONSE_TEMPLATE = Version(transformers.__version__) >= Version("5.13.0")


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def masked(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True, **kwargs)
    return out["input_ids"], out["assistant_masks"]


@pytest.fixture(scope="module")
def old_folder(tmp_path_factory):
    """A tokenizer folder as OpenLLM wrote it before tool calling: seven special tokens and the legacy template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    legacy_tokens = [*SPECIAL_TOKENS.values(), "<|system|>", "<|user|>", "<|assistant|>"]
    backend.train_from_iterator(["What is 12*7? It is 84.", "Be brief. Hello!"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=legacy_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS, chat_template=LEGACY_CHAT_TEMPLATE,
                                        additional_special_tokens=legacy_tokens[4:],
                                        model_input_names=["input_ids", "attention_mask"])
    folder = tmp_path_factory.mktemp("old-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("messages", PLAIN)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_without_tools_renders_as_the_legacy_template(tokenizer, messages, add_generation_prompt):
    new, old = ({"chat_template": t, "add_generation_prompt": add_generation_prompt}
                for t in (CHAT_TEMPLATE, LEGACY_CHAT_TEMPLATE))
    assert render(tokenizer, messages, **new) == render(tokenizer, messages, **old)
    assert masked(tokenizer, messages, **new) == masked(tokenizer, messages, **old)
    assert render(tokenizer, messages, tools=[], **new) == render(tokenizer, messages, **old)


def test_old_tokenizer_folders_load_and_answer_as_before(old_folder):
    tokenizer = AutoTokenizer.from_pretrained(old_folder)
    assert tokenizer.chat_template == LEGACY_CHAT_TEMPLATE and getattr(tokenizer, "response_template", None) is None
    before = [masked(tokenizer, m, add_generation_prompt=g) for m in PLAIN for g in (False, True)]
    assert enable_tool_calling(tokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.response_template == RESPONSE_TEMPLATE
    assert [masked(tokenizer, m, add_generation_prompt=g) for m in PLAIN for g in (False, True)] == before
    # no tool tokens in this vocabulary: the markers are plain text, and read back all the same
    assert len(tokenizer.tokenize("<tool_call>")) > 1
    ids, mask = masked(tokenizer, TOOL_TURN[:2])
    generated = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
    assert parse_tool_calls(generated) == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    other = AutoTokenizer.from_pretrained(old_folder)
    other.chat_template = "{{ messages[0]['content'] }}"
    assert not enable_tool_calling(other) and other.chat_template == "{{ messages[0]['content'] }}"


def test_tool_conversation(tokenizer):
    expected = ("<|system|>\nBe brief.\n\nTools:\n" + TOOL_LINE + "<|eos|>"
                "<|user|>\nWhat is 12*7?<|eos|>"
                "<|assistant|>\n" + CALL_TEXT + "<|eos|>"
                "<|tool|>\n<tool_response>84</tool_response><|eos|>"
                "<|assistant|>\nIt is 84.<|eos|>")
    assert render(tokenizer, [SYSTEM, *TOOL_TURN], tools=tool_schemas()) == expected
    # the function itself (as TRL passes it) renders the same as its schema
    assert render(tokenizer, [SYSTEM, *TOOL_TURN], tools=[TOOLS["calculator"].function]) == expected
    # without a system message, the tools get a system turn of their own
    assert render(tokenizer, TOOL_TURN, tools=tool_schemas()).startswith(
        "<|system|>\nTools:\n" + TOOL_LINE + "<|eos|><|user|>\nWhat is 12*7?<|eos|>")
    bare = [{"type": "function", "function": {"name": "now"}}, {"name": "add", "description": "Add.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]
    assert render(tokenizer, TOOL_TURN[:1], tools=bare) == (
        "<|system|>\nTools:\nnow()\nadd(a, b): Add.<|eos|><|user|>\nWhat is 12*7?<|eos|>")
    # the OpenAI form: no content, arguments as a JSON string, ids; content before the calls
    openai = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'}}]}
    assert render(tokenizer, [TOOL_TURN[0], openai]) == render(tokenizer, TOOL_TURN[:2])
    two = {"role": "assistant", "content": "Both:", "tool_calls": [CALL, CALL]}
    assert render(tokenizer, [two]) == "<|assistant|>\nBoth:" + 2 * CALL_TEXT + "<|eos|>"
    assert render(tokenizer, TOOL_TURN[:3], add_generation_prompt=True).endswith(
        "<tool_response>84</tool_response><|eos|><|assistant|>\n")
    with pytest.raises(Exception, match="Unknown role bot: use system, user, assistant or tool"):
        render(tokenizer, [{"role": "bot", "content": "x"}])


def test_training_covers_the_calls_but_not_the_results(tokenizer):
    ids, mask = masked(tokenizer, [SYSTEM, *TOOL_TURN], tools=tool_schemas())
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == CALL_TEXT + "<|eos|>It is 84.<|eos|>"
    untrained = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert "<tool_response>84</tool_response>" in untrained and "Tools:" in untrained


def test_tool_tokens(tokenizer):
    """Single tokens after the seven of old, and not special: decoding for display keeps the calls readable."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ["<|tool|>", *TOOL_TOKENS]]
    assert ids == [7, 8, 9, 10, 11]
    text = '<|tool|>\n<tool_response>84</tool_response><tool_call>{"a": 1}</tool_call><|eos|>'
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(i in encoded for i in ids)
    assert tokenizer.decode(encoded, skip_special_tokens=True) == (
        '\n<tool_response>84</tool_response><tool_call>{"a": 1}</tool_call>')


def test_saved_folder_keeps_the_template_and_response_template(tokenizer, tmp_path):
    save_tokenizer(tokenizer, str(tmp_path))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["response_template"] == RESPONSE_TEMPLATE
    assert "<tool_call>" not in config["additional_special_tokens"]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == CHAT_TEMPLATE
    assert render(loaded, TOOL_TURN, tools=tool_schemas()) == render(tokenizer, TOOL_TURN, tools=tool_schemas())
    if SUPPORTS_RESPONSE_TEMPLATE:
        assert loaded.response_template == RESPONSE_TEMPLATE


def test_trl_accepts_the_template_for_tool_calling(tokenizer):
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
        supports_tool_calling,
    )

    assert supports_tool_calling(tokenizer)
    assert is_chat_template_prefix_preserving(tokenizer)  # GRPO appends tool results to the generated ids
    assert is_chat_template_stop_token_trained(tokenizer)


@pytest.mark.skipif(not SUPPORTS_RESPONSE_TEMPLATE, reason="response_template parsing needs transformers >= 5.13")
@pytest.mark.parametrize("reply", [
    {"role": "assistant", "content": "It is 84."},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "assistant", "content": "Let me see.", "tool_calls": [CALL, CALL]},
])
def test_parse_response_reads_what_the_template_writes(tokenizer, reply):
    from trl.chat_template_utils import parse_response

    prompt = tokenizer.apply_chat_template(TOOL_TURN[:1], tools=tool_schemas(), add_generation_prompt=True,
                                           return_dict=False)
    full = tokenizer.apply_chat_template([TOOL_TURN[0], reply], tools=tool_schemas(), return_dict=False)
    generated = full[len(prompt):]
    parsed = tokenizer.parse_response(generated, prefix=prompt, tools=tool_schemas())
    assert {"content": "", **parsed} == reply == parse_tool_calls(tokenizer.decode(generated))
    assert parse_response(tokenizer, generated, prefix=prompt, tools=[TOOLS["calculator"].function]) == reply
    # what TRL's GRPO does with a malformed call: no call, the text as content
    bad = tokenizer('<tool_call>{"name": </tool_call><|eos|>', add_special_tokens=False)["input_ids"]
    assert parse_response(tokenizer, bad, prefix=prompt) == {"role": "assistant", "content": '<tool_call>{"name": '
                                                                                              "</tool_call>"}
