"""Prompt-lookup speculative decoding: greedy text identical to plain decoding, with fewer forward passes where the
answer repeats its context."""

import numpy as np
import pytest
from test_serve_engine import run_all
from tiny_model import make_tiny_model

from openllm.serving.engine import Engine, SamplingParams, prompt_lookup

TEXT = "the quick brown fox jumps over the lazy dog hello world serving models is fun "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-spec"), initializer_range=0.5)


def test_prompt_lookup_copies_what_followed_the_last_earlier_occurrence():
    assert prompt_lookup(np.array([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3]), 3) == [7, 8, 1]  # the most recent match
    assert prompt_lookup(np.array([5, 1, 2, 4, 6, 1, 2]), 5) == [4, 6, 1, 2]  # 3-gram absent, 2-gram found
    assert prompt_lookup(np.array([1, 2, 3, 4]), 4) == []


def decode(tiny, prompts, speculative_tokens, **params):
    model, tokenizer = tiny
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    engine = Engine(model, tokenizer, max_batch_size=1, speculative_tokens=speculative_tokens).start()
    try:
        seqs = [run_all(engine, [(tokenizer(p)["input_ids"], SamplingParams(**params))])[0] for p in prompts]
    finally:
        engine.stop()
        hook.remove()
    return seqs, len(calls)


def test_greedy_text_is_identical_and_repeating_context_needs_fewer_forwards(tiny):
    prompts = [TEXT * 2 + TEXT[:k] for k in (10, 25, 40)] + ["hello world", "a language model predicts"]
    plain, plain_calls = decode(tiny, prompts, 0, max_new_tokens=40)
    fast, fast_calls = decode(tiny, prompts, 8, max_new_tokens=40)
    for a, b in zip(plain, fast):
        assert b.generated == a.generated and b.finish_reason == a.finish_reason
        assert [t.logprob for t in b.tokens] == pytest.approx([t.logprob for t in a.tokens], abs=1e-4)
    assert fast_calls < plain_calls


def test_stop_sequences_and_lengths_end_where_plain_decoding_ends(tiny):
    prompts = [TEXT * 3]
    for params in (dict(max_new_tokens=7), dict(max_new_tokens=60, stop=["lazy"])):
        (plain,), _ = decode(tiny, prompts, 0, **params)
        (fast,), _ = decode(tiny, prompts, 8, **params)
        assert fast.generated == plain.generated and fast.text == plain.text
        assert fast.finish_reason == plain.finish_reason and fast.stop_index == plain.stop_index


def test_sampled_rows_are_not_speculated(tiny):
    (a,), calls_a = decode(tiny, [TEXT * 2], 0, max_new_tokens=20, do_sample=True, seed=3)
    (b,), calls_b = decode(tiny, [TEXT * 2], 8, max_new_tokens=20, do_sample=True, seed=3)
    assert a.generated == b.generated and calls_a == calls_b
