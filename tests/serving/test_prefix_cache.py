"""Prefix caching: requests that share a prefix reuse its keys and values, and answer exactly as without the cache."""

import pytest
import torch
from test_serve_engine import run_all
from tiny_model import make_tiny_model

from openllm.serving.engine import Engine, SamplingParams
from openllm.serving.prefix_cache import PrefixCache

SHARED = "the quick brown fox jumps over the lazy dog " * 8  # a system prompt of about 80 tokens
QUESTIONS = ["hello world", "a language model", "batching many requests", "serving models is fun", "the lazy dog",
             "predicts the next token"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-prefix"), initializer_range=0.5)


def generate(tiny, prompts, prefix_cache_bytes, attention="sdpa", rounds=2):
    model, tokenizer = tiny
    model.config._attn_implementation = attention
    engine = Engine(model, tokenizer, max_batch_size=4, prefix_cache_bytes=prefix_cache_bytes).start()
    try:
        results = []
        for _ in range(rounds):  # the second round finds every prompt cached
            params = SamplingParams(max_new_tokens=12, top_n=1)
            results.append(run_all(engine, [(tokenizer(p)["input_ids"], params) for p in prompts]))
        return engine, results
    finally:
        engine.stop()
        model.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_cached_prefixes_answer_exactly_as_full_prefills(tiny, attention):
    prompts = [SHARED + q for q in QUESTIONS]
    _, (reference,) = generate(tiny, prompts, prefix_cache_bytes=0, attention=attention, rounds=1)
    engine, rounds = generate(tiny, prompts, prefix_cache_bytes=64 << 20, attention=attention)
    for seqs in rounds:
        for cached, plain in zip(seqs, reference):
            assert cached.generated == plain.generated
            assert [t.logprob for t in cached.tokens] == pytest.approx([t.logprob for t in plain.tokens], abs=1e-4)
    first, second = rounds
    block = engine.prefix_cache.block_size
    shared_blocks = len(tiny[1](SHARED)["input_ids"]) // block * block
    # the first round reuses the shared prefix once a request holding it was prefilled; the second reuses more
    assert max(s.cached_tokens for s in first) >= shared_blocks
    assert all(s.cached_tokens >= shared_blocks for s in second)
    assert all(s.cached_tokens == (len(s.prompt_ids) - 1) // block * block for s in second)


def test_eviction_keeps_the_cache_within_its_budget_and_answers_stay_exact(tiny):
    prompts = [f"{q} " * 6 + SHARED for q in QUESTIONS]  # no shared prefix: every prompt is an entry
    _, (reference,) = generate(tiny, prompts, prefix_cache_bytes=0, rounds=1)
    model = tiny[0]
    per_token = 2 * model.config.num_hidden_layers * model.config.num_key_value_heads * model.config.head_dim * 4
    budget = 250 * per_token  # room for about two of the prompts
    engine, rounds = generate(tiny, prompts, prefix_cache_bytes=budget)
    assert 0 < engine.prefix_cache.nbytes <= budget and len(engine.prefix_cache.entries) <= 2
    for seqs in rounds:
        assert [s.generated for s in seqs] == [s.generated for s in reference]


def test_a_hash_collision_never_serves_another_prompts_cache(monkeypatch):
    cache = PrefixCache(max_bytes=1 << 20, block_size=2)
    monkeypatch.setattr(cache, "_chain", lambda ids, blocks: list(range(blocks)))  # every prompt collides
    kv = [torch.zeros(1, 1, 4, 2)]
    cache.store([1, 2, 3, 4], kv, kv)
    assert cache.lookup([1, 2, 3, 4, 5])[0] == 4
    assert cache.lookup([9, 9, 9, 9, 5]) is None


def test_the_openai_usage_reports_cached_prompt_tokens(server):
    import openai
    from server_process import API_KEY

    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=API_KEY, max_retries=0)
    messages = [{"role": "system", "content": SHARED}, {"role": "user", "content": "hello world"}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert second.choices[0].message.content == first.choices[0].message.content
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 64 and cached < second.usage.prompt_tokens
