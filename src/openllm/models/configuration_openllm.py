"""OpenLLM configuration: a Llama-style decoder whose MLP layers can be Mixture-of-Experts layers.

This file and `modeling_openllm.py` import only torch and transformers, so `save_pretrained` can copy them into
a checkpoint and anyone can load it with `trust_remote_code=True`, without installing `openllm`.
"""

from transformers import PretrainedConfig

ROPE_TYPES = ("default", "linear", "llama3")
# the epistemic head's settings, each one's default (see `epistemic_head` below)
EPISTEMIC_HEAD_DEFAULTS = {"index_dim": 8, "hidden_size": 64, "top_k": 16, "prior_scale": 4.0, "num_samples": 16}


class OpenLLMConfig(PretrainedConfig):
    r"""
    Configuration of an OpenLLM model. Field names follow transformers' Llama/Mixtral/Qwen3-MoE configs so that
    PEFT, accelerate, optimum and inference engines find them.

    Args:
        vocab_size (`int`, defaults to 32000): size of the token vocabulary.
        hidden_size (`int`, defaults to 384): width of the residual stream.
        intermediate_size (`int`, defaults to 1024): width of the SwiGLU MLP of dense layers.
        num_hidden_layers (`int`, defaults to 8): number of decoder layers.
        num_attention_heads (`int`, defaults to 6): number of query heads.
        num_key_value_heads (`int`, *optional*): number of key/value heads (grouped-query attention); defaults to
            `num_attention_heads`. Must divide `num_attention_heads`.
        head_dim (`int`, *optional*): width of one head; defaults to `hidden_size // num_attention_heads`.
        hidden_act (`str`, defaults to `"silu"`): activation of the gated MLP.
        max_position_embeddings (`int`, defaults to 2048): longest sequence the model is meant for.
        initializer_range (`float`, defaults to 0.02): std of the normal init of every weight matrix.
        scale_residual_init (`bool`, defaults to `True`): divide the init std of the projections that write into the
            residual stream (`o_proj`, `down_proj`) by `sqrt(2 * num_hidden_layers)` (GPT-2), so the residual
            stream's variance does not grow with depth.
        rms_norm_eps (`float`, defaults to 1e-5): epsilon of RMSNorm.
        use_cache (`bool`, defaults to `True`): return key/value caches for generation.
        tie_word_embeddings (`bool`, defaults to `True`): share the input embedding and the LM head.
        rope_theta (`float`, defaults to 10000.0): base of the rotary frequencies.
        rope_parameters (`dict`, *optional*): rotary scaling, `{"rope_type": "default" | "linear" | "llama3", ...}`
            with `factor` (linear, llama3) and `low_freq_factor`, `high_freq_factor`,
            `original_max_position_embeddings` (llama3). `rope_scaling` is accepted as an alias.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        num_experts (`int`, defaults to 0): experts per MoE layer; 0 makes every layer dense.
        num_experts_per_tok (`int`, defaults to 2): experts each token is routed to.
        moe_intermediate_size (`int`, *optional*): width of each expert's MLP; defaults to `intermediate_size`.
        decoder_sparse_step (`int`, defaults to 1): every `decoder_sparse_step`-th layer is an MoE layer.
        mlp_only_layers (`list[int]`, *optional*): indices of layers that stay dense in an MoE model.
        norm_topk_prob (`bool`, defaults to `True`): renormalise the top-k routing weights to sum to one.
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balancing loss in the training loss.
        router_z_loss_coef (`float`, defaults to 0.001): weight of the router z-loss (ST-MoE) in the training loss.
        router_expert_bias (`bool`, defaults to `False`): balance the experts without a loss (DeepSeek-V3): each
            router keeps a per-expert bias, saved with the weights (`mlp.gate.e_score_correction_bias`), that is added
            to the routing probabilities to choose the experts but not to their weights. Training moves it instead of
            a gradient; usually paired with `router_aux_loss_coef=0`. Mixtral and llama.cpp cannot express it.
        router_bias_update_rate (`float`, defaults to 0.001): after each optimizer step (`update_router_bias`),
            each bias moves by this much toward the experts that received fewer than the mean number of tokens, away
            from the others. 0 freezes the biases.
        output_router_logits (`bool`, defaults to `False`): return every MoE layer's router logits.
        logits_temperature (`float`, defaults to 1.0): the forward pass returns `logits / logits_temperature`;
            `openllm calibrate` fits it on held-out text (temperature scaling), so generation, evaluation and serving
            all use the calibrated distribution.
        logits_bias (`list[float]`, *optional*): one bias per token, added after the temperature: the logits become
            `logits / logits_temperature + logits_bias` (Platt scaling, fitted by `openllm calibrate`). Null adds
            nothing.
        beta_calibration (`list[float]`, *optional*): `[a, b, c]` of beta calibration (Kull et al., 2017), applied
            last: the top-1 probability p becomes `1 / (1 + 1 / (e^c p^a / (1 - p)^b))`, the other tokens share the
            rest in their old proportions, and the forward pass returns these log-probabilities as its logits. Null
            applies none.
        qk_norm (`bool`, defaults to `False`): RMSNorm over each head's queries and keys before RoPE (OLMo 2, Qwen3),
            which keeps attention logits bounded at high learning rates. Llama cannot express it.
        zero_init_output_projections (`bool`, defaults to `False`): start the projections that write into the
            residual stream (`o_proj`, `down_proj`, experts' `down_proj`) at zero, so every layer starts as the
            identity (modded-nanogpt). Changes only the initialisation.
        final_logit_softcapping (`float`, *optional*): squash the logits into (-cap, cap) with `cap * tanh(logits /
            cap)` (Gemma 2). Llama cannot express it.
        epistemic_head (`dict`, *optional*): add an epinet (`OpenLLMEpistemicHead`) that splits each prediction's
            uncertainty into aleatoric and epistemic parts in the same forward pass; null (the default) adds nothing.
            Keys, each optional: `index_dim` (8, size of the random index z), `hidden_size` (64, width of its two
            small networks), `top_k` (16, tokens whose logits it perturbs; the rest move as one), `prior_scale` (4.0,
            size of the fixed random prior's perturbation), `num_samples` (16, indices z averaged over). It never
            changes the logits; `openllm epistemic-head` trains it with the model frozen. Converters drop it.
    """

    model_type = "openllm"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=None,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        scale_residual_init=True,
        rms_norm_eps=1e-5,
        use_cache=True,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rope_parameters=None,
        attention_dropout=0.0,
        num_experts=0,
        num_experts_per_tok=2,
        moe_intermediate_size=None,
        decoder_sparse_step=1,
        mlp_only_layers=None,
        norm_topk_prob=True,
        router_aux_loss_coef=0.01,
        router_z_loss_coef=0.001,
        router_expert_bias=False,
        router_bias_update_rate=0.001,
        output_router_logits=False,
        logits_temperature=1.0,
        logits_bias=None,
        beta_calibration=None,
        qk_norm=False,
        zero_init_output_projections=False,
        final_logit_softcapping=None,
        epistemic_head=None,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads if head_dim is None else head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.scale_residual_init = scale_residual_init
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = float(rope_theta)
        rope = dict(rope_parameters or kwargs.pop("rope_scaling", None) or {})
        rope.setdefault("rope_type", rope.pop("type", "default"))
        rope["rope_theta"] = self.rope_theta
        if rope["rope_type"] == "llama3":  # Llama 3.1's values, written out so every reader sees the same ones
            rope.setdefault("low_freq_factor", 1.0)
            rope.setdefault("high_freq_factor", 4.0)
        self.rope_parameters = rope
        self.attention_dropout = attention_dropout
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = intermediate_size if moe_intermediate_size is None else moe_intermediate_size
        self.decoder_sparse_step = decoder_sparse_step
        self.mlp_only_layers = [] if mlp_only_layers is None else list(mlp_only_layers)
        self.norm_topk_prob = norm_topk_prob
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.router_expert_bias = router_expert_bias
        self.router_bias_update_rate = router_bias_update_rate
        self.output_router_logits = output_router_logits
        self.logits_temperature = float(logits_temperature)
        self.logits_bias = None if logits_bias is None else [float(x) for x in logits_bias]
        self.beta_calibration = None if beta_calibration is None else [float(x) for x in beta_calibration]
        self.qk_norm = qk_norm
        self.zero_init_output_projections = zero_init_output_projections
        self.final_logit_softcapping = final_logit_softcapping
        self.epistemic_head = None if epistemic_head is None else {**EPISTEMIC_HEAD_DEFAULTS, **epistemic_head}
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate(self):
        def fail(msg):
            raise ValueError(f"Invalid OpenLLMConfig: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                fail(f"`{name}` must be a positive integer, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            fail(f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                 f"({self.num_key_value_heads}) for grouped-query attention.")
        if self.head_dim % 2:
            fail(f"`head_dim` must be even for rotary embeddings, got {self.head_dim}.")
        rope_type = self.rope_parameters["rope_type"]
        if rope_type not in ROPE_TYPES:
            fail(f"`rope_parameters['rope_type']` must be one of {ROPE_TYPES}, got {rope_type!r}.")
        if rope_type != "default" and "factor" not in self.rope_parameters:
            fail(f"rope_type {rope_type!r} needs a `factor` in `rope_parameters`.")
        if rope_type == "llama3" and "original_max_position_embeddings" not in self.rope_parameters:
            fail("rope_type 'llama3' needs `original_max_position_embeddings` in `rope_parameters`: the context "
                 "length the model was trained with before scaling.")
        if self.num_experts < 0:
            fail(f"`num_experts` must be >= 0 (0 means dense), got {self.num_experts}.")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            fail(f"`num_experts_per_tok` must be between 1 and `num_experts` ({self.num_experts}), "
                 f"got {self.num_experts_per_tok}.")
        if not self.logits_temperature > 0:
            fail(f"`logits_temperature` must be > 0, got {self.logits_temperature}.")

        def finite(values):
            return all(abs(v) < float("inf") for v in values)  # NaN fails too

        if self.logits_bias is not None and (len(self.logits_bias) != self.vocab_size or not finite(self.logits_bias)):
            fail(f"`logits_bias` must hold one finite number per token ({self.vocab_size}), got "
                 f"{len(self.logits_bias)} values.")
        beta = self.beta_calibration
        if beta is not None and (len(beta) != 3 or not finite(beta) or min(beta[:2]) < 0):
            fail(f"`beta_calibration` must be [a, b, c] with finite a, b >= 0, got {beta}.")
        if self.router_bias_update_rate < 0:
            fail(f"`router_bias_update_rate` must be >= 0, got {self.router_bias_update_rate}.")
        if self.decoder_sparse_step < 1:
            fail(f"`decoder_sparse_step` must be >= 1, got {self.decoder_sparse_step}.")
        cap = self.final_logit_softcapping
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
            fail(f"`final_logit_softcapping` must be a positive number (or null for no capping), got {cap!r}.")
        head = self.epistemic_head
        if head is not None:
            unknown = sorted(set(head) - set(EPISTEMIC_HEAD_DEFAULTS))
            if unknown:
                fail(f"`epistemic_head` has unknown keys {unknown}; it takes {sorted(EPISTEMIC_HEAD_DEFAULTS)}.")
            sizes = ("index_dim", "hidden_size", "top_k", "num_samples")
            if any(not isinstance(head[k], int) or head[k] < 1 for k in sizes) or not head["prior_scale"] > 0:
                fail(f"`epistemic_head` needs positive integers {', '.join(sizes)} and prior_scale > 0, got {head}.")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            fail(f"`mlp_only_layers` has indices outside [0, {self.num_hidden_layers}): {bad}.")

    def llama_incompatibilities(self) -> list[str]:
        """Why Llama/Mixtral (and llama.cpp's llama architecture) cannot compute this model's function, one reason
        per option; empty when they can."""
        reasons = []
        if self.qk_norm:
            reasons.append("qk_norm=True normalises queries and keys inside attention, which Llama and Mixtral "
                           "attention do not do")
        if self.num_experts and self.router_expert_bias:
            reasons.append("router_expert_bias=True chooses experts with a per-expert bias on the routing "
                           "probabilities, which Mixtral's router does not have")
        if self.final_logit_softcapping:
            reasons.append(f"final_logit_softcapping={self.final_logit_softcapping} caps the logits with tanh, "
                           "which Llama and Mixtral heads do not do")
        return reasons

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether decoder layer `layer_idx` uses a Mixture-of-Experts MLP (Qwen3-MoE's convention)."""
        return (
            self.num_experts > 0
            and layer_idx not in self.mlp_only_layers
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )


__all__ = ["OpenLLMConfig"]
