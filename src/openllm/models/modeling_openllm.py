"""OpenLLM: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention) with optional Mixture-of-Experts
layers in the Mixtral/Qwen3-MoE layout.

The file reads top to bottom like the paper: compatibility shims → RMSNorm → rotary embedding → MLP → router and
experts → attention → decoder layer → pretrained base → model → heads. It imports only torch, transformers and
`configuration_openllm`, so checkpoints carry it and load with `trust_remote_code=True` on transformers 4.57 and 5.x.
"""

import inspect
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from .configuration_openllm import EPISTEMIC_HEAD_DEFAULTS, OpenLLMConfig

try:  # transformers >= 5: init helpers that leave already-loaded tensors alone
    from transformers import initialization as init
except ImportError:  # transformers 4.57 marks loaded modules itself
    from torch.nn import init

try:  # transformers >= 5: `from_pretrained(..., experts_implementation=...)` picks the experts' kernel
    from transformers.integrations.moe import ExpertsInterface, use_experts_implementation
except ImportError:  # transformers 4.57: `OpenLLMExperts.forward` picks it
    ExpertsInterface = None

    def use_experts_implementation(experts_class=None, **kwargs):
        return lambda cls: cls


# ---------------------------------------------------------------------------------------------------------------------
# The few places where transformers 4.57 and 5.x differ
# ---------------------------------------------------------------------------------------------------------------------

_MASK_PARAMS = inspect.signature(create_causal_mask).parameters
_MASK_NEEDS_CACHE_POSITION = "input_embeds" in _MASK_PARAMS  # 4.57
# transformers 5.24 renamed the key/value cache `past_key_values` → `cache`, as argument and as output field
CACHE = "cache" if "cache" in _MASK_PARAMS else "past_key_values"


if not hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 4.57: 5.x's lookup, with eager as default
    type(ALL_ATTENTION_FUNCTIONS).get_interface = (
        lambda self, implementation, default: default if implementation in (None, "eager") else self[implementation])


def output_cache(output):
    """The key/value cache a model output carries, under the installed transformers' name for it."""
    return getattr(output, CACHE, None)


def _causal_mask(config, inputs_embeds, attention_mask, cache_position, past_key_values, position_ids):
    if _MASK_NEEDS_CACHE_POSITION:
        return create_causal_mask(
            config=config, input_embeds=inputs_embeds, attention_mask=attention_mask,
            cache_position=cache_position, past_key_values=past_key_values, position_ids=position_ids,
        )
    return create_causal_mask(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
        **{CACHE: past_key_values},
    )


def _decode_step_mask(config, attention_mask, past_key_values, seq_len):
    """SDPA's mask for one new token per row over a dynamic cache, or False where the general mask is needed.

    One query attends to every cached key, so only padding needs masking: no mask at all without padding, else the
    2-D mask as a (batch, 1, 1, keys) boolean. The same tensors transformers' mask builder returns here, without its
    per-step overhead (a few percent of a small model's decode step).
    """
    if (seq_len != 1 or config._attn_implementation != "sdpa" or type(past_key_values) is not DynamicCache
            or torch.compiler.is_compiling() or torch.jit.is_tracing()):  # graphs must not bake in `.all()` below
        return False
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != past_key_values.get_seq_length() + 1:
        return False
    return None if attention_mask.all() else attention_mask[:, None, None, :].bool()


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


class OpenLLMRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        # the mean of squares is taken in fp32: in bf16 it loses most of its mantissa
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def rope_inverse_frequencies(config: OpenLLMConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with `linear` or `llama3` scaling as the config asks."""
    dim, rope = config.head_dim, config.rope_parameters
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope["rope_type"] == "linear":
        return inv_freq / rope["factor"]
    if rope["rope_type"] == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class OpenLLMRotaryEmbedding(nn.Module):
    def __init__(self, config: OpenLLMConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # angles in fp32: bf16 positions above 256 are no longer integers
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class OpenLLMMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: OpenLLMConfig, intermediate_size: Optional[int] = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.down_proj.writes_residual = True
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class OpenLLMTopKRouter(nn.Module):
    def __init__(self, config: OpenLLMConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        if config.router_expert_bias:
            # loss-free balancing (DeepSeek-V3): an offset on the scores that choose the experts, not on their
            # weights, moved toward balanced load by `update_router_bias` and never by gradient
            self.register_buffer("e_score_correction_bias", torch.zeros(config.num_experts))
            # tokens per expert in training since the last update; not a buffer, which DDP would overwrite with
            # rank 0's
            self.routed_tokens = None

    def forward(self, hidden_states: torch.Tensor):
        router_logits = F.linear(hidden_states, self.weight)  # (N, E)
        # routing decisions in fp32: bf16 ties flip which experts win
        probs = F.softmax(router_logits.float(), dim=-1)
        bias = getattr(self, "e_score_correction_bias", None)
        if bias is None:
            top_weights, top_index = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        else:
            top_index = torch.topk(probs + bias.float(), self.top_k, dim=-1).indices
            top_weights = probs.gather(-1, top_index)
            if self.training:
                self._observe_load(top_index)
        if self.norm_topk_prob:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_weights.to(hidden_states.dtype), top_index

    @torch.compiler.disable  # a graph break, so that compiled training still counts
    def _observe_load(self, top_index):
        counts = torch.bincount(top_index.flatten(), minlength=self.weight.shape[0])
        self.routed_tokens = counts if self.routed_tokens is None else self.routed_tokens + counts


def eager_experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The reference: a loop over the experts that received tokens, each gathering its tokens and adding its output
    back with `index_add_`."""
    out = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index, num_classes=module.num_experts).permute(2, 1, 0)  # (E, k, N)
        experts_hit = (expert_mask.sum(dim=(-1, -2)) > 0).nonzero().flatten().tolist()
    for e in experts_hit:
        slot, token = torch.where(expert_mask[e])
        gate, up = F.linear(hidden_states[token], module.gate_up_proj[e]).chunk(2, dim=-1)
        y = F.linear(module.act_fn(gate) * up, module.down_proj[e]) * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


_GROUPED_MM = getattr(F, "grouped_mm", None)  # torch >= 2.10


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(S, in) rows in groups (`ends`: cumulative row counts, int32), each group times its (in, out) matrix of
    `weight` (G, in, out) → (S, out)."""
    if _GROUPED_MM is not None:
        if x.device.type == "cpu":
            fits = weight.data_ptr() % 16 == 0  # torch 2.10's CPU kernel needs aligned (not memory-mapped) weights
        else:
            fits = (x.device.type == "cuda" and x.dtype == torch.bfloat16
                    and torch.cuda.get_device_capability(x.device) >= (8, 0))
        if fits:
            return _GROUPED_MM(x, weight, offs=ends)
    # no grouped kernel here: one matmul per expert over its contiguous rows
    sizes = torch.diff(ends, prepend=ends.new_zeros(1)).tolist()
    return torch.cat([rows @ w for rows, w in zip(x.split(sizes), weight)])


def grouped_experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """Every expert in one grouped matmul per projection: the (token, slot) pairs sorted by expert so that each
    expert's rows are contiguous, one gather before and one reordering after. Equals `eager_experts_forward`: the same
    products per row, and for top-2 the same sum."""
    num_tokens, k = top_k_index.shape
    expert_ids, order = torch.sort(top_k_index.reshape(-1), stable=True)  # (N*k,)
    experts = torch.arange(module.num_experts, device=expert_ids.device)
    ends = torch.searchsorted(expert_ids, experts, right=True, out_int32=True)  # (E,)
    x = hidden_states.index_select(0, order // k)
    gate_up, down = module.gate_up_proj.transpose(1, 2), module.down_proj.transpose(1, 2)  # (E, H, 2I), (E, I, H)
    device = x.device.type
    if _GROUPED_MM is not None and torch.is_autocast_enabled(device):
        # autocast does not cover the grouped kernel: cast once, as F.linear would in each expert's matmul
        dtype = torch.get_autocast_dtype(device)
        x, gate_up, down = x.to(dtype), gate_up.to(dtype), down.to(dtype)
    # gate and up apart, as the dense MLP does: contiguous halves, where one product's would be strided
    intermediate = gate_up.shape[-1] // 2
    gate = _grouped_mm(x, gate_up[..., :intermediate], ends)
    up = _grouped_mm(x, gate_up[..., intermediate:], ends)
    y = _grouped_mm(module.act_fn(gate) * up, down, ends)
    y = torch.empty_like(y).index_copy(0, order, y).view(num_tokens, k, -1)  # back to (token, slot) order
    return (y * top_k_weights[..., None]).sum(1).to(hidden_states.dtype)


if ExpertsInterface is not None:  # the registry's own kernels, with ours as "grouped_mm", the default
    EXPERTS_FUNCTIONS = ExpertsInterface()
    EXPERTS_FUNCTIONS["grouped_mm"] = grouped_experts_forward
else:
    EXPERTS_FUNCTIONS = None


@use_experts_implementation(experts_interface=EXPERTS_FUNCTIONS)
class OpenLLMExperts(nn.Module):
    """All experts of one layer as fused 3-D weights: `gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I).

    `grouped_experts_forward` computes them unless `config._experts_implementation` names another kernel ("eager":
    the loop of `eager_experts_forward`; transformers 5 also offers "batched_mm" and accelerator kernels).
    """

    def __init__(self, config: OpenLLMConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(config.num_experts, 2 * config.moe_intermediate_size,
                                                     config.hidden_size))
        self.down_proj = nn.Parameter(torch.empty(config.num_experts, config.hidden_size,
                                                  config.moe_intermediate_size))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states, top_k_index, top_k_weights):
        # on transformers 5 the decorator dispatches, and calls this for "eager" only
        if getattr(self.config, "_experts_implementation", None) == "eager":
            return eager_experts_forward(self, hidden_states, top_k_index, top_k_weights)
        return grouped_experts_forward(self, hidden_states, top_k_index, top_k_weights)


class OpenLLMSparseMoeBlock(nn.Module):
    """Top-k routed experts. Counts the tokens each expert receives, for utilisation logging."""

    def __init__(self, config: OpenLLMConfig):
        super().__init__()
        self.num_experts = config.num_experts  # read here: engines (vLLM) replace `experts` with their own kernel
        self.gate = OpenLLMTopKRouter(config)
        self.experts = OpenLLMExperts(config)
        self.expert_counts = None  # a plain attribute, not a buffer: not saved, not synchronised by DDP

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        router_logits, top_k_weights, top_k_index = self.gate(flat)
        if not torch.compiler.is_compiling():
            counts = torch.bincount(top_k_index.flatten(), minlength=self.num_experts).detach()
            self.expert_counts = counts if self.expert_counts is None else self.expert_counts + counts
        out = self.experts(flat, top_k_index, top_k_weights)
        return out.reshape(batch, seq, hidden), router_logits


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, D) → (B, kv_heads * n_rep, T, D)."""
    batch, kv_heads, seq, dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, seq, dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, seq, dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key.shape[-2]]
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return attn_output, attn_weights


class OpenLLMAttention(nn.Module):
    """Grouped-query attention; the kernel comes from transformers' attention-function registry."""

    def __init__(self, config: OpenLLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        self.o_proj.writes_residual = True
        if config.qk_norm:  # RMSNorm over each head's queries and keys, before RoPE (OLMo 2, Qwen3)
            self.q_norm = OpenLLMRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = OpenLLMRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None,
                cache_position=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape)  # (B, T, H, D)
        key = self.k_proj(hidden_states).view(hidden_shape)  # (B, T, KV, D)
        if self.config.qk_norm:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None and CACHE == "cache":  # transformers >= 5.24: the cache fills the kwargs
            key, value = past_key_values.update(key, value, self.layer_idx, kwargs=kwargs)
        elif past_key_values is not None:
            cache_kwargs = None if cache_position is None else {"cache_position": cache_position}
            key, value = past_key_values.update(key, value, self.layer_idx, cache_kwargs)

        # written as transformers' own models write it (a local taken from the registry, called once): engines
        # such as vLLM and SGLang read this method's source to find where to put their own attention
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


class OpenLLMDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: OpenLLMConfig, layer_idx: int):
        super().__init__()
        self.self_attn = OpenLLMAttention(config, layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = OpenLLMSparseMoeBlock(config) if self.is_moe else OpenLLMMLP(config)
        self.input_layernorm = OpenLLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = OpenLLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None,
                cache_position=None, **kwargs):
        residual = hidden_states
        hidden_states, attn_weights = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask,
            past_key_values=past_key_values, cache_position=cache_position, **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        router_logits = None
        if self.is_moe:
            hidden_states, router_logits = self.mlp(hidden_states)
        else:
            hidden_states = self.mlp(hidden_states)
        return residual + hidden_states, attn_weights, router_logits


# ---------------------------------------------------------------------------------------------------------------------
# Router losses
# ---------------------------------------------------------------------------------------------------------------------


def _token_mask(router_logits: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Flattened (N,) mask of real tokens, or None if every token counts."""
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.numel() != router_logits.shape[0]:
        return None
    return attention_mask.reshape(-1).to(router_logits.device, torch.float32)


def load_balancing_loss(router_logits: torch.Tensor, top_k: int, attention_mask=None,
                        expert_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Switch-Transformer auxiliary loss for one layer: `E * sum_e f_e * P_e`, equal to `top_k` when balanced.

    `f_e` is the fraction of routing slots sent to expert e (chosen with the router's `expert_bias`, if any) and
    `P_e` its mean router probability.
    """
    num_experts = router_logits.shape[-1]
    probs = F.softmax(router_logits.float(), dim=-1)  # (N, E)
    scores = probs if expert_bias is None else probs + expert_bias.float()
    chosen = F.one_hot(torch.topk(scores, top_k, dim=-1).indices, num_experts).sum(1).float()  # (N, E)
    mask = _token_mask(router_logits, attention_mask)
    if mask is None:
        fraction, mean_prob = chosen.mean(0), probs.mean(0)
    else:
        denom = mask.sum().clamp(min=1)
        fraction = (chosen * mask[:, None]).sum(0) / denom
        mean_prob = (probs * mask[:, None]).sum(0) / denom
    return num_experts * (fraction * mean_prob).sum()


def router_z_loss(router_logits: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """ST-MoE z-loss for one layer: mean of logsumexp(logits)^2, which keeps router logits small and stable."""
    z = torch.logsumexp(router_logits.float(), dim=-1).pow(2)
    mask = _token_mask(router_logits, attention_mask)
    return z.mean() if mask is None else (z * mask).sum() / mask.sum().clamp(min=1)


def expert_load(router_logits: torch.Tensor, top_k: int, expert_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fraction of one layer's routing slots that each expert received, shape (E,), summing to 1."""
    scores = router_logits if expert_bias is None else F.softmax(router_logits.float(), -1) + expert_bias.float()
    index = torch.topk(scores, top_k, dim=-1).indices
    return torch.bincount(index.flatten(), minlength=router_logits.shape[-1]).float() / index.numel()


# ---------------------------------------------------------------------------------------------------------------------
# Language-modelling loss
# ---------------------------------------------------------------------------------------------------------------------


class _CrossEntropySum(torch.autograd.Function):
    """Summed token cross-entropy of (N, V) logits, computed in fp32 a block of rows at a time.

    Equal to `F.cross_entropy(logits.float(), targets, reduction="sum")`, but no fp32 copy of the logits, their
    log-softmax or their gradient is ever materialised whole: each block holds a few MiB.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, block):
        valid = targets != ignore_index
        targets = targets.masked_fill(~valid, 0)
        losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], block):
            rows = slice(start, start + block)
            log_probs = torch.log_softmax(logits[rows], dim=-1, dtype=torch.float32)
            losses[rows] = -log_probs.gather(1, targets[rows, None]).squeeze(1)
        ctx.save_for_backward(logits, targets, valid)
        ctx.block = block
        return (losses * valid).sum()

    @staticmethod
    def backward(ctx, grad_output):
        logits, targets, valid = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = valid * grad_output
        for start in range(0, logits.shape[0], ctx.block):
            rows = slice(start, start + ctx.block)
            probs = torch.softmax(logits[rows], dim=-1, dtype=torch.float32)
            probs[torch.arange(probs.shape[0], device=probs.device), targets[rows]] -= 1.0
            grad[rows] = probs.mul_(scale[rows, None])
        return grad, None, None, None


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                   shift_labels=None, **kwargs) -> torch.Tensor:
    """transformers' `ForCausalLMLoss` (same arguments, same value: mean over non-ignored tokens, or sum divided by
    `num_items_in_batch`), without its full-size fp32 intermediates, which dominate memory with a large vocabulary."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    targets = shift_labels.reshape(-1).to(logits.device)
    if torch.compiler.is_compiling():
        # inductor fuses the upcast into the softmax's own passes, so the plain form never holds fp32 logits whole
        # either, and it runs faster than the blockwise one traced by dynamo
        total = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    else:
        # 8 MiB of fp32 rows per block on a CPU (near cache-sized, yet few parallel regions); far larger blocks on
        # accelerators, where every block costs kernel launches
        block = max(1, (2**23 if logits.device.type == "cpu" else 2**28) // (4 * vocab_size))
        total = _CrossEntropySum.apply(logits, targets, ignore_index, block)
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# ---------------------------------------------------------------------------------------------------------------------
# Post-hoc calibration of the next-token distribution (fitted by `openllm calibrate`, stored in the config)
# ---------------------------------------------------------------------------------------------------------------------


def beta_calibrate(logits: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """Beta calibration (Kull et al., 2017) of the top-1 probability p of softmax(logits): it becomes
    p' = 1 / (1 + 1 / (e^c p^a / (1 - p)^b)) and the other tokens share 1 - p' in their old proportions. Returns the
    log-probabilities of that distribution, which are valid logits (softmax gives them back)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = logprobs.argmax(-1, keepdim=True)
    log_p = logprobs.gather(-1, top)
    # ln(1 - p) from the other tokens' probabilities, which stays exact as p → 1
    log_rest = torch.logsumexp(logprobs.scatter(-1, top, float("-inf")), dim=-1, keepdim=True)
    z = c + a * log_p - b * log_rest  # logit of p'
    rest_left = torch.isfinite(log_rest)  # a row whose other tokens have no probability at all stays as it is
    shift = torch.where(rest_left, F.logsigmoid(-z) - log_rest, torch.zeros_like(log_rest))
    new_top = torch.where(rest_left, F.logsigmoid(z), log_p)
    return (logprobs + shift).scatter(-1, top, new_top).to(logits.dtype)


def calibrate_logits(logits: torch.Tensor, temperature: float = 1.0, bias: Optional[torch.Tensor] = None,
                     beta: Optional[list] = None) -> torch.Tensor:
    """The calibration a config stores, in order: divide by `temperature`, add the per-token `bias` (Platt scaling),
    beta-calibrate the top-1 probability (`beta = [a, b, c]`). A step at its default is skipped, so the logits of an
    uncalibrated model are the output layer's own, bit for bit."""
    if temperature != 1.0:
        logits = logits / temperature
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    if beta is not None:
        logits = beta_calibrate(logits, *beta)
    return logits


# ---------------------------------------------------------------------------------------------------------------------
# Epistemic head: total, aleatoric and epistemic uncertainty of each prediction in one forward pass (an epinet)
# ---------------------------------------------------------------------------------------------------------------------


class OpenLLMEpistemicHead(nn.Module):
    """An epinet (Osband et al., "Epistemic neural networks", 2023) on the model's hidden states h, read (detached)
    at the embeddings, the middle layer and the last one: the last alone misses inputs that the model maps onto
    familiar final states (numbers longer than it saw, in our tests).

    For a random index z ~ N(0, I_D), the logits of the top-k tokens, and of the rest of the vocabulary as one bucket
    (its tokens keep their proportions), move by z · (learnable(h) + prior(h)) / √D, where `prior` is a random
    network that is never trained. With the model frozen, the learnable network is trained to make in-domain
    predictions agree across z, which it can only do by cancelling the prior on hidden states like those it saw;
    elsewhere the prior shows through and the predictions disagree. That disagreement, the mutual information between
    the prediction and z, is the epistemic uncertainty; the mean entropy over z is the aleatoric part (deep ensembles'
    decomposition, with z in place of the member). The mean move over z is zero and the head only reads the logits,
    so the model's own predictions never change.

    Perturbing k + 1 buckets instead of the whole vocabulary keeps it cheap and loses nothing: the tokens outside the
    top k keep one distribution for every z, so their entropy adds P(rest) × its entropy to every z alike, and the
    mutual information is exactly the buckets'.
    """

    def __init__(self, config: OpenLLMConfig):
        super().__init__()
        spec = {**EPISTEMIC_HEAD_DEFAULTS, **config.epistemic_head}  # an override in `from_pretrained` skips them
        self.index_dim, self.num_samples = spec["index_dim"], spec["num_samples"]
        self.prior_scale = spec["prior_scale"]
        self.top_k = min(spec["top_k"], config.vocab_size - 1)  # at least one token left for the rest
        self.layers = (0, config.num_hidden_layers // 2, config.num_hidden_layers)  # indices into hidden_states
        features, width = len(self.layers) * config.hidden_size, spec["hidden_size"]
        out = self.index_dim * (self.top_k + 1)
        self.learnable_in = nn.Parameter(torch.empty(features, width))
        self.learnable_out = nn.Parameter(torch.empty(width, out))
        # buffers: part of the function, so saved and loaded with it, but never trained
        self.register_buffer("prior_in", torch.empty(features, width))
        self.register_buffer("prior_out", torch.empty(width, out))

    def features(self, hidden_states) -> torch.Tensor:
        """The states the head reads, (..., 3, hidden), from a forward pass's `hidden_states` (all layers')."""
        return torch.stack([hidden_states[i] for i in self.layers], -2).detach()

    def sample_index(self, num_samples: Optional[int] = None, seed: int = 0) -> torch.Tensor:
        """(num_samples, D) indices z; the same ones for a seed, so that scores are reproducible."""
        return torch.randn(num_samples or self.num_samples, self.index_dim,
                           generator=torch.Generator().manual_seed(seed))

    def buckets(self, logits: torch.Tensor):
        """(bucket logits (..., k+1): the top-k log-probabilities then the rest's; the rest's own entropy (...); the
        top-k token ids (..., k)). Three passes over the vocabulary (softmax, top-k, one product), the cost of the
        predictive entropy alone."""
        logits = logits.detach().float()
        probs = logits.softmax(-1)
        top_probs, ids = probs.topk(self.top_k, dim=-1)
        top_logits = logits.gather(-1, ids)
        log_z = top_logits[..., 0] - top_probs[..., 0].log()  # log-sum-exp of the logits, from the top token
        expected_logit = (probs.unsqueeze(-2) @ logits.unsqueeze(-1))[..., 0, 0]  # sum_v p_v logit_v
        # the rest's mass and mean logit from the whole minus the top k; a rest too small to resolve in float32
        # weighs too little to matter
        rest = (1 - top_probs.sum(-1)).clamp_min(1e-12)
        rest_mean_logit = (expected_logit - (top_probs * top_logits).sum(-1)) / rest
        rest_entropy = (log_z + rest.log() - rest_mean_logit).clamp_min(0)  # -sum q log q, q the rest's own shares
        return torch.cat([top_logits - log_z[..., None], rest.log()[..., None]], -1), rest_entropy, ids

    def index_log_probs(self, features: torch.Tensor, bucket_logits: torch.Tensor, index: torch.Tensor):
        """Log-probabilities of the buckets under each index z of `index` (K, D): (K, ..., k+1)."""
        h = features.detach().to(self.learnable_in.dtype)
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).flatten(-2)  # each layer at unit scale
        inner = F.gelu(h @ torch.cat([self.learnable_in, self.prior_in], 1))  # both networks in one product
        learned, prior = inner.chunk(2, -1)
        directions = torch.cat([learned, prior * self.prior_scale], -1) @ torch.cat(
            [self.learnable_out, self.prior_out], 0)
        directions = directions.unflatten(-1, (self.index_dim, -1))  # (..., D, k+1)
        shift = torch.einsum("zd,...dj->z...j", index.to(directions), directions) / math.sqrt(self.index_dim)
        return torch.log_softmax(bucket_logits + shift.float(), -1)

    def forward(self, features: torch.Tensor, logits: torch.Tensor, index: Optional[torch.Tensor] = None):
        """Total, aleatoric and epistemic uncertainty (nats) of each prediction, stacked: (..., 3). `features`:
        `self.features(output.hidden_states)` of a forward pass with `output_hidden_states=True`, `logits` its
        logits (both may be indexed alike first, e.g. to the positions that matter)."""
        index = self.sample_index() if index is None else index
        bucket_logits, rest_entropy, _ = self.buckets(logits)
        log_probs = self.index_log_probs(features, bucket_logits, index)  # (K, ..., k+1)

        def entropy(lp):  # of the whole vocabulary: the buckets' plus P(rest) × the rest's own
            return torch.special.entr(lp.exp()).sum(-1) + lp[..., -1].exp() * rest_entropy

        aleatoric = entropy(log_probs).mean(0)
        total = entropy(log_probs.logsumexp(0) - math.log(len(index)))
        # clamp: rounding can make a zero mutual information slightly negative
        return torch.stack([total, aleatoric, (total - aleatoric).clamp_min(0)], -1)

    def target_buckets(self, top_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The bucket of each target token: its rank among the top k, or k (the rest)."""
        hit = top_ids == targets[..., None]
        return torch.where(hit.any(-1), hit.int().argmax(-1), self.top_k)


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


def _normal_or_zeros(weight, std):
    if std:
        init.normal_(weight, mean=0.0, std=std)
    else:
        init.zeros_(weight)


class OpenLLMPreTrainedModel(PreTrainedModel):
    config_class = OpenLLMConfig
    config: OpenLLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OpenLLMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _supports_cache_class = True
    _supports_static_cache = True
    # every class this file ships, under its Auto class: engines that build the base model themselves (vLLM's
    # transformers backend calls AutoModel) find it in a folder saved from any head
    AUTO_MAP = {"AutoModel": "OpenLLMModel", "AutoModelForCausalLM": "OpenLLMForCausalLM",
                "AutoModelForSequenceClassification": "OpenLLMForSequenceClassification"}

    def save_pretrained(self, *args, **kwargs):
        if getattr(type(self), "_auto_class", None) is not None:  # the folder carries this code
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    **{auto: f"{module}.{name}" for auto, name in self.AUTO_MAP.items()}}
        return super().save_pretrained(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        """Normal(0, initializer_range) for every matrix, ones for norms; residual-stream writers (o_proj,
        down_proj, experts' down_proj) get std / sqrt(2 * num_hidden_layers) when `scale_residual_init` is set."""
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers) if self.config.scale_residual_init else std
        if self.config.zero_init_output_projections:
            residual_std = 0.0
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if getattr(module, "writes_residual", False):
                _normal_or_zeros(module.weight, residual_std)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                if not getattr(module.weight, "_is_hf_initialized", False):
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, OpenLLMRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, OpenLLMTopKRouter):
            init.normal_(module.weight, mean=0.0, std=std)
            if hasattr(module, "e_score_correction_bias"):
                init.zeros_(module.e_score_correction_bias)
        elif isinstance(module, OpenLLMExperts):
            init.normal_(module.gate_up_proj, mean=0.0, std=std)
            _normal_or_zeros(module.down_proj, residual_std)
        elif isinstance(module, OpenLLMEpistemicHead):
            # unit-variance layers (the prior's scale is `prior_scale`); the learnable output starts at zero, so the
            # untrained head is the prior alone
            for weight in (module.learnable_in, module.prior_in, module.prior_out):
                init.normal_(weight, mean=0.0, std=weight.shape[0] ** -0.5)
            init.zeros_(module.learnable_out)
        elif isinstance(module, OpenLLMRotaryEmbedding):
            # non-persistent, so never loaded; transformers 5 creates it on the meta device
            module.inv_freq = rope_inverse_frequencies(module.config).to(module.inv_freq.device)

    def get_expert_load(self, reset: bool = True) -> dict[int, torch.Tensor]:
        """Fraction of routed tokens each expert received per MoE layer since the last reset: {layer: (E,)}."""
        load = {}
        for idx, layer in enumerate(self.base_model.layers):
            if layer.is_moe and layer.mlp.expert_counts is not None:
                counts = layer.mlp.expert_counts.float()
                load[idx] = counts / counts.sum().clamp(min=1)
                if reset:
                    layer.mlp.expert_counts = None
        return load

    @torch.no_grad()
    def update_router_bias(self) -> None:
        """One step of loss-free balancing (`router_expert_bias`): each router's bias moves by
        `router_bias_update_rate` up for the experts that received fewer than the mean number of tokens in training
        since the last call, down for the others. Call it after every optimizer step, as openllm's trainers do; eval
        and generation count no tokens, so they never move it.

        Under torch.distributed the counts are summed over ranks first (one all-reduce), so every rank applies the
        same update and the biases stay identical; every rank must call it.
        """
        routers = [layer.mlp.gate for layer in self.base_model.layers
                   if layer.is_moe and hasattr(layer.mlp.gate, "e_score_correction_bias")]
        if not routers:
            return
        device = routers[0].e_score_correction_bias.device
        load = torch.stack([torch.zeros(r.e_score_correction_bias.shape, device=device) if r.routed_tokens is None
                            else r.routed_tokens.to(device, torch.float32) for r in routers])  # (layers, E)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        # a sign step: the same size however skewed the load, and none for a layer that routed nothing
        step = torch.sign(load.mean(-1, keepdim=True) - load) * self.config.router_bias_update_rate
        for router, delta in zip(routers, step):
            router.e_score_correction_bias.add_(delta.to(router.e_score_correction_bias))
            router.routed_tokens = None


class OpenLLMModel(OpenLLMPreTrainedModel):
    def __init__(self, config: OpenLLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(OpenLLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = OpenLLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = OpenLLMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Cache] = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        past_key_values = cache if cache is not None else past_key_values  # transformers >= 5.24 passes `cache`
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)

        seq_len = inputs_embeds.shape[1]
        cache_position = kwargs.pop("cache_position", None)
        # transformers 5 neither passes nor needs cache positions; 4.57's masks and static caches do
        if cache_position is None and (_MASK_NEEDS_CACHE_POSITION or position_ids is None):
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            cache_position = torch.arange(past_seen, past_seen + seq_len, device=inputs_embeds.device)
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # positions count real tokens only, so a left-padded row matches the same text unpadded
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq_len:]
            else:
                position_ids = cache_position.unsqueeze(0)

        causal_mask = _decode_step_mask(self.config, attention_mask, past_key_values, seq_len)
        if causal_mask is False:
            causal_mask = _causal_mask(self.config, inputs_embeds, attention_mask, cache_position, past_key_values,
                                       position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)

        all_hidden_states, all_attentions, all_router_logits = (), (), ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights, router_logits = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                cache_position=cache_position,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (attn_weights,)
            if router_logits is not None:
                all_router_logits += (router_logits,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            **{CACHE: past_key_values if use_cache else None},
            hidden_states=all_hidden_states or None,
            attentions=all_attentions or None,
            router_logits=all_router_logits or None,
        )
        return output if return_dict else output.to_tuple()


class OpenLLMForCausalLM(OpenLLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_rep"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: OpenLLMConfig):
        super().__init__(config)
        self.model = OpenLLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # off by default, and then no parameters and no work: the forward pass never calls it
        self.epistemic_head = OpenLLMEpistemicHead(config) if config.epistemic_head else None
        self.loss_function = causal_lm_loss  # assign another loss function to replace it
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def _calibration_bias(self, logits):
        """`config.logits_bias` as a tensor beside `logits`, converted once per list (assign a new list to change
        it), device and dtype rather than at every decoding step."""
        bias = self.config.logits_bias
        if bias is None:
            return None
        cached = getattr(self, "_calibration_bias_cache", None)
        if (cached is None or cached[0] is not bias or cached[1].device != logits.device
                or cached[1].dtype != logits.dtype):
            cached = (bias, torch.tensor(bias, dtype=logits.dtype, device=logits.device))
            self._calibration_bias_cache = cached
        if cached[1].shape[-1] != logits.shape[-1]:
            raise ValueError(f"config.logits_bias (Platt scaling from `openllm calibrate`) has {cached[1].shape[-1]} "
                             f"values but the model predicts {logits.shape[-1]} tokens (were its embeddings "
                             "resized?); calibrate it again, or set logits_bias to None.")
        return cached[1]

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Optional[Cache] = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch, seq)`, *optional*): token ids to predict, shifted inside the
            loss; -100 marks positions to ignore.
        logits_to_keep (`int` or `torch.Tensor`): compute logits for the last `logits_to_keep` positions only (0
            keeps all); generation keeps 1, which saves the (seq × vocab) projection.

        In training mode the loss of an MoE model includes `router_aux_loss_coef * aux_loss +
        router_z_loss_coef * z_loss`; in eval mode it is the language-modelling loss alone, so perplexity stays
        comparable with dense models. `aux_loss` is always returned for MoE models.
        """
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        if self.config.final_logit_softcapping:  # cap * tanh(logits / cap): no logit grows past ±cap (Gemma 2)
            cap = self.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        # temperature, Platt or beta scaling fitted by `openllm calibrate`; none by default
        logits = calibrate_logits(logits, self.config.logits_temperature, self._calibration_bias(logits),
                                  self.config.beta_calibration)

        loss = aux_loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=num_items_in_batch)
        if outputs.router_logits:
            k = self.config.num_experts_per_tok
            biases = [getattr(layer.mlp.gate, "e_score_correction_bias", None)
                      for layer in self.model.layers if layer.is_moe]
            aux_loss = torch.stack([load_balancing_loss(r, k, attention_mask, b)
                                    for r, b in zip(outputs.router_logits, biases)]).mean()
            if loss is not None and self.training:
                z_loss = torch.stack([router_z_loss(r, attention_mask) for r in outputs.router_logits]).mean()
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
                loss = loss + self.config.router_z_loss_coef * z_loss.to(loss.device)

        output = MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            **{CACHE: output_cache(outputs)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits else None,
        )
        return output if return_dict else output.to_tuple()


class OpenLLMForSequenceClassification(OpenLLMPreTrainedModel):
    """Decoder plus a linear `score` head read at each sequence's last non-pad token (the reward-model head)."""

    def __init__(self, config: OpenLLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = OpenLLMModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Cache] = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        kwargs.pop("num_items_in_batch", None)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache if cache is not None else past_key_values,
                             inputs_embeds=inputs_embeds, use_cache=use_cache,
                             return_dict=True, **kwargs)
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        batch = logits.shape[0]
        if attention_mask is not None and attention_mask.dim() == 2:
            # rightmost real token, whichever side was padded
            positions = torch.arange(attention_mask.shape[-1], device=logits.device)
            last = (positions * attention_mask.to(logits.device).long()).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            positions = torch.arange(input_ids.shape[-1], device=logits.device)
            last = (positions * (input_ids != self.config.pad_token_id).to(logits.device).long()).argmax(-1)
        elif batch == 1:
            last = torch.tensor([logits.shape[1] - 1], device=logits.device)
        else:
            raise ValueError("Batches of more than one sequence need an `attention_mask` or a `pad_token_id` in the "
                             "config to find each sequence's last token.")
        pooled_logits = logits[torch.arange(batch, device=logits.device), last]

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled_logits, **{CACHE: output_cache(outputs)},
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "OpenLLMPreTrainedModel",
    "OpenLLMModel",
    "OpenLLMForCausalLM",
    "OpenLLMForSequenceClassification",
    "OpenLLMEpistemicHead",
    "load_balancing_loss",
    "router_z_loss",
    "expert_load",
]
