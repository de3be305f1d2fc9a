"""Dense vs Mixture-of-Experts at equal active parameters: the same data, tokenizer, steps and batch.

The dense model is the quickstart's (4 layers, hidden 128, MLP 384); the MoE model replaces each MLP with 4 experts
of width 192, top-2, so both spend the same parameters per token while the MoE model stores more.
"""

import sys
import tempfile
from pathlib import Path

from readme import machine_description, write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BASE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
MODELS = {"dense": BASE, "MoE (4 experts, top-2)": dict(BASE, num_experts=4, num_experts_per_tok=2,
                                                       moe_intermediate_size=192)}
STEPS = 150


def run(name, overrides, out, tokenizer):
    from openllm.models.presets import parameter_counts
    from openllm.training.arguments import DataArguments, ModelArguments, PretrainConfig
    from openllm.training.pretrain import get_model_config, pretrain

    data = DataArguments(dataset_name="builtin:python-docs", text_column="text", eval_fraction=0.02,
                         block_size=256, vocab_size=4096, tokenizer_name_or_path=tokenizer)
    model = ModelArguments(model_preset="tiny", model_config_overrides=overrides)
    args = PretrainConfig(output_dir=out, max_steps=STEPS, per_device_train_batch_size=16, learning_rate=1e-3,
                          warmup_steps=15, eval_steps=STEPS, save_strategy="no", disable_tqdm=True, seed=42,
                          final_eval_documents=0, logging_steps=25)
    summary = pretrain(data, model, args)
    config = get_model_config(model)
    config.vocab_size = summary["data"]["vocab_size"]
    total, active = parameter_counts(config)
    m = summary["metrics"]
    loads = m.get("expert_load") or {}
    balance = max((max(v) * len(v) for v in loads.values()), default=None)
    return (f"| {name} | {total:,} | {active:,} | {m['tokens_seen']:,} | {m['eval_loss']:.4f} | "
            f"{m['bits_per_byte']:.4f} | {m['tokens_seen'] / summary['train_runtime_s']:,.0f} | "
            f"{'–' if balance is None else f'{balance:.2f}'} |")


def main(write_readme: bool = False):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = None
        for i, (name, overrides) in enumerate(MODELS.items()):
            out = f"{tmp}/{i}"
            rows.append(run(name, overrides, out, tokenizer))
            tokenizer = out  # the second model reuses the first one's tokenizer
    table = (f"Dense vs MoE at equal active parameters ({machine_description()}, bf16 autocast): built-in corpus, "
             f"BPE 4k, {STEPS} steps of 16 × 256 tokens each, the same seed and schedule; held-out loss on the same "
             "documents. Expert load is the busiest expert's share × number of experts in the last logging window "
             "(1.0 = balanced).\n\n"
             "| model | total params | active params | tokens | eval loss | bits/byte | tokens/s | expert load |\n"
             "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(table)
    if write_readme:
        write_section("moe", table)


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
