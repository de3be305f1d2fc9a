"""The block-wise cross-entropy gives transformers' `ForCausalLMLoss` value and gradient."""

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from openllm import OpenLLMForCausalLM, get_preset_config
from openllm.models.modeling_openllm import causal_lm_loss

VOCAB = 1000  # more than one block of rows per call (the block holds 2 MiB of fp32 rows)


def loss_and_grad(loss_function, logits, labels, **kwargs):
    logits = logits.detach().requires_grad_()
    loss = loss_function(logits=logits, labels=labels, vocab_size=VOCAB, **kwargs)
    (2.5 * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), logits.grad


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-5)])
@pytest.mark.parametrize("num_items_in_batch", [None, 500, torch.tensor(777)])
def test_matches_transformers_loss(dtype, atol, num_items_in_batch):
    logits = (4 * torch.randn(3, 700, VOCAB)).to(dtype)
    labels = torch.randint(0, VOCAB, (3, 700))
    labels[0, :100] = -100
    labels[2] = -100
    expected, expected_grad = loss_and_grad(ForCausalLMLoss, logits, labels, num_items_in_batch=num_items_in_batch)
    loss, grad = loss_and_grad(causal_lm_loss, logits, labels, num_items_in_batch=num_items_in_batch)
    assert loss.dtype == expected.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, expected, atol=atol, rtol=1e-6)
    torch.testing.assert_close(grad.float(), expected_grad.float(), atol=atol, rtol=1e-3)


def test_shift_labels_and_all_ignored():
    logits, labels = torch.randn(2, 5, VOCAB), torch.randint(0, VOCAB, (2, 5))
    torch.testing.assert_close(causal_lm_loss(logits, None, VOCAB, shift_labels=labels),
                               ForCausalLMLoss(logits, None, VOCAB, shift_labels=labels))
    ignored = torch.full((2, 5), -100)
    assert causal_lm_loss(logits, ignored, VOCAB).isnan()  # like F.cross_entropy's mean over nothing
    assert causal_lm_loss(logits, ignored, VOCAB, num_items_in_batch=4) == 0


def test_model_loss_and_logits_are_conventional():
    model = OpenLLMForCausalLM(get_preset_config("tiny")).train()
    input_ids = torch.randint(0, 512, (2, 40))
    out = model(input_ids=input_ids, labels=input_ids, num_items_in_batch=torch.tensor(60))
    assert out.logits.requires_grad  # logits stay differentiable, as in transformers models
    expected = ForCausalLMLoss(out.logits, input_ids, 512, num_items_in_batch=torch.tensor(60))
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)


def test_compiled_model_trains_like_the_eager_one():
    """Under torch.compile the loss takes its plain form (inductor fuses the upcast); value and gradients agree."""
    torch.manual_seed(0)
    eager = OpenLLMForCausalLM(get_preset_config("tiny")).train()
    compiled = OpenLLMForCausalLM(get_preset_config("tiny")).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    input_ids = torch.randint(0, 512, (2, 40))
    labels = input_ids.clone()
    labels[1, :10] = -100
    losses, grads = [], []
    for model in (eager, compiled):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.model.layers[0].mlp.down_proj.weight.grad)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
