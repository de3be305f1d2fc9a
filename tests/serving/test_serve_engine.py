"""The batching engine in-process: batched results equal unbatched ones, and seeds make sampling reproducible."""

import copy
import threading

import pytest
import torch
from tiny_model import make_tiny_model

from openllm.serving.engine import Engine, SamplingParams, Sequence, pack_linear_weights, sample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def run_all(engine, requests):
    """Submit every (prompt_ids, params) at once and wait for all of them."""
    done = [threading.Event() for _ in requests]
    seqs = []
    for (ids, params), event in zip(requests, done):
        seq = Sequence(ids, params, lambda out, e=event: e.set() if out.finish_reason else None)
        seqs.append(seq)
        engine.submit(seq)
    assert all(e.wait(60) for e in done)
    return seqs


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # SDPA gets a ready 4-D mask, eager the 2-D one
def test_batched_greedy_equals_generate(tiny, attention):
    model, tokenizer = tiny
    prompts = ["hello world", "the quick brown fox jumps over", "a", "serving models is fun and the lazy dog"]
    lengths = [12, 20, 5, 16]  # different lengths: rows leave the batch at different steps
    model, reference = copy.deepcopy(model), copy.deepcopy(model)  # the engine packs its model's weights
    for m in (model, reference):
        m.set_attn_implementation(attention)
    engine = Engine(model, tokenizer, max_batch_size=8).start()
    try:
        assert engine._sdpa_mask == (attention == "sdpa")
        seqs = run_all(engine, [(tokenizer(p)["input_ids"], SamplingParams(max_new_tokens=n))
                                for p, n in zip(prompts, lengths)])
    finally:
        engine.stop()
    assert hasattr(model.lm_head, "_packed_weight") and not hasattr(reference.lm_head, "_packed_weight")
    for prompt, n, seq in zip(prompts, lengths, seqs):
        enc = tokenizer(prompt, return_tensors="pt")
        expected = reference.generate(**enc, max_new_tokens=n, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
        assert seq.generated == expected
        assert seq.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert seq.finish_reason == ("eos_token" if expected[-1] == tokenizer.eos_token_id else "length")


def test_packed_weights_change_the_layout_only(tiny):
    model, reference = copy.deepcopy(tiny[0]), tiny[0]
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert pack_linear_weights(model) == len(linears) == 15  # 7 per layer and the output head
    assert pack_linear_weights(model) == 0  # packed once
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights stay tied
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    with torch.inference_mode():
        logits, reference_logits = model(ids).logits, reference(ids).logits
    torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-5)
    assert not torch.equal(logits, torch.zeros_like(logits))
    assert pack_linear_weights(copy.deepcopy(reference).to(torch.bfloat16)) == 0  # float32 only


def test_seeded_sampling_is_independent_of_the_batch(tiny):
    model, tokenizer = tiny
    params = dict(max_new_tokens=15, do_sample=True, temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    ids = tokenizer("hello world")["input_ids"]
    engine = Engine(model, tokenizer, max_batch_size=8).start()
    try:
        (alone,) = run_all(engine, [(ids, SamplingParams(**params))])
        crowd = run_all(engine, [(tokenizer("the lazy dog")["input_ids"], SamplingParams(**{**params, "seed": 7})),
                                 (ids, SamplingParams(**params)),
                                 (tokenizer("a language model")["input_ids"], SamplingParams(max_new_tokens=30))])
        (other_seed,) = run_all(engine, [(ids, SamplingParams(**{**params, "seed": 99}))])
        greedy_ids = tokenizer("a language model")["input_ids"]
        (greedy_alone,) = run_all(engine, [(greedy_ids, SamplingParams(max_new_tokens=30))])
    finally:
        engine.stop()
    assert crowd[1].generated == alone.generated
    assert crowd[2].generated == greedy_alone.generated  # a greedy row among sampled ones keeps its argmax
    assert other_seed.generated != alone.generated


def test_sampling_respects_top_k(tiny):
    model, tokenizer = tiny
    ids = tokenizer("the quick brown")["input_ids"]
    engine = Engine(model, tokenizer).start()
    try:
        top_k = run_all(engine, [(ids, SamplingParams(max_new_tokens=1, do_sample=True, top_k=2, seed=s))
                                 for s in range(24)])
        free = run_all(engine, [(ids, SamplingParams(max_new_tokens=1, do_sample=True, seed=s)) for s in range(24)])
    finally:
        engine.stop()
    with torch.no_grad():
        top2 = model(torch.tensor([ids])).logits[0, -1].topk(2).indices.tolist()
    assert {seq.generated[0] for seq in top_k} <= set(top2)
    assert len({seq.generated[0] for seq in free}) > 2  # without top-k the same seeds reach other tokens


def reference_distribution(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Softmax at the temperature, then top-k, then top-p, the way `generate`'s warpers do it, by sorting."""
    probs = (logits / p.temperature).softmax(-1)
    ranked, order = probs.sort(descending=True)
    keep = torch.ones_like(ranked, dtype=torch.bool)
    if p.top_k:
        keep[p.top_k:] = False
        ranked = ranked * keep / (ranked * keep).sum()
    keep &= (ranked.cumsum(-1) - ranked) < p.top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = ranked[keep] / ranked[keep].sum()
    return out


@pytest.mark.parametrize("kind, params", [
    ("full", dict(temperature=0.7)),
    ("top_p", dict(temperature=1.3, top_p=0.8)),
    ("top_k", dict(top_k=5, top_p=0.9)),
    ("top_k", dict(top_k=12, temperature=0.5)),
])
def test_batched_sampling_draws_from_each_rows_truncated_distribution(kind, params):
    torch.manual_seed(0)
    rows, draws = 3, 4000
    logits = torch.randn(rows, 50) * 2
    p = SamplingParams(do_sample=True, **params)
    # evenly spaced uniform numbers: the share of each token among the draws is its probability, to 1/draws
    grid = ((torch.arange(draws) + 0.5) / draws).tolist()
    for row in range(rows):
        tokens = sample(logits[row].expand(draws, -1), [p] * draws, grid, kind)
        shares = torch.bincount(tokens, minlength=50).float() / draws
        assert shares.tolist() == pytest.approx(reference_distribution(logits[row], p).tolist(), abs=1.5 / draws)


@pytest.mark.parametrize("kind, params", [("top_p", dict(top_p=0.5)), ("top_k", dict(top_k=3)),
                                          ("full", dict(temperature=1.0))])
def test_a_uniform_just_below_one_never_picks_a_token_without_probability(kind, params):
    """1 - 1e-9 rounds to 1.0 in float32: the pick must stay inside the truncated distribution."""
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, float("-inf")]])
    p = SamplingParams(do_sample=True, **params)
    allowed = reference_distribution(logits[0], p) > 0
    assert torch.float32 == torch.tensor([1 - 1e-9]).dtype and torch.tensor([1 - 1e-9]).item() == 1.0
    token = sample(logits, [p], [1 - 1e-9], kind)
    assert allowed[token].all() and token.item() == int(allowed.nonzero().max())
