"""Named model sizes. Exact parameter counts (`presets_table()`, `openllm presets`) are in the README."""

from .configuration_openllm import OpenLLMConfig

_SMALL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=1024)

PRESETS: dict[str, dict] = {
    # unit tests and smoke runs
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256),
    "tiny-moe": dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=80),
    # the seed roadmap: ~25M, ~117M, ~350M
    "small": _SMALL,
    "medium": dict(hidden_size=768, intermediate_size=2688, num_hidden_layers=12, num_attention_heads=12,
                   num_key_value_heads=4, max_position_embeddings=2048),
    "large": dict(hidden_size=1024, intermediate_size=3328, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=8, max_position_embeddings=2048),
    # `small` with 8 experts, top-2, each expert half as wide: the same active parameters as `small`
    "moe": dict(_SMALL, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=512),
}


def get_preset_config(name: str, **overrides) -> OpenLLMConfig:
    """`OpenLLMConfig` of a named preset, with any field overridden (e.g. `vocab_size=len(tokenizer)`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Choose one of: {', '.join(PRESETS)}.")
    return OpenLLMConfig(**{**PRESETS[name], **overrides})


def parameter_counts(config: OpenLLMConfig) -> tuple[int, int]:
    """(total, active per token) parameters of `config`, computed from shapes without building the model."""
    h, v, L = config.hidden_size, config.vocab_size, config.num_hidden_layers
    attn = h * config.head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    embed = v * h * (1 if config.tie_word_embeddings else 2)
    total = active = embed + h  # final norm
    for i in range(L):
        layer = attn + 2 * h
        if config.is_moe_layer(i):
            expert = 3 * h * config.moe_intermediate_size
            total += layer + config.num_experts * expert + config.num_experts * h
            active += layer + config.num_experts_per_tok * expert + config.num_experts * h
        else:
            mlp = 3 * h * config.intermediate_size
            total += layer + mlp
            active += layer + mlp
    return total, active


def presets_table() -> str:
    """Markdown table of every preset's shape and exact parameter counts."""
    rows = ["| preset | layers | hidden | heads (kv) | experts | total params | active params |",
            "|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        c = get_preset_config(name)
        total, active = parameter_counts(c)
        experts = f"{c.num_experts} (top-{c.num_experts_per_tok})" if c.num_experts else "–"
        rows.append(f"| `{name}` | {c.num_hidden_layers} | {c.hidden_size} | {c.num_attention_heads} "
                    f"({c.num_key_value_heads}) | {experts} | {total:,} | {active:,} |")
    return "\n".join(rows)


def add_arguments(parser):
    pass


def run(args):
    print(presets_table())
