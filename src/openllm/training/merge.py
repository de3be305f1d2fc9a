"""`openllm merge`: fold a LoRA adapter into its base model and save a standalone model.

    openllm merge --adapter outputs/sft-lora --output-dir outputs/sft-merged [--base BASE] [--dtype bfloat16]

The folder holds the merged weights, the modeling code and `auto_map` (it loads with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` without openllm installed), the tokenizer, and
`training_summary.json` with stage "merge". Before saving, the merged model's logits are compared with base+adapter's
on a probe batch; the largest difference is recorded as `max_abs_logit_diff`.
"""

import json
import logging
import time
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel

from .. import atomic
from ..data.tokenizer import portable_tokenizer_config
from ..hub.paths import check_output_folder
from ..hub.push import push_folder
from ..models.loading import RemoteCodeError, load_model, load_tokenizer
from .run import SUMMARY_FILE, describe_hardware, write_card

logger = logging.getLogger("openllm.training.merge")

_TOLERANCE = {"float32": 1e-4, "float16": 5e-2, "bfloat16": 1e-1}


def add_arguments(parser):
    parser.add_argument("--adapter", required=True, help="folder or Hub id of a LoRA adapter (adapter_config.json)")
    parser.add_argument("--output-dir", required=True, help="where to write the merged model")
    parser.add_argument("--base", default=None,
                        help="base model folder or Hub id; defaults to the adapter's `base_model_name_or_path`")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="dtype to merge and save in (default: float32 on CPUs)")
    parser.add_argument("--trust-remote-code", action="store_true", help="for base models that ship their own code")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload the merged folder")


def run(args):
    summary = merge_adapter(args.adapter, args.output_dir, base=args.base, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code)
    print(f"Merged {args.adapter} into {summary['base_model']} → {args.output_dir} "
          f"(max |logit difference| vs base+adapter: {summary['metrics']['max_abs_logit_diff']:.2e})")
    if args.push_to_hub:
        push_folder(args.output_dir, args.push_to_hub)
    return 0


def merge_adapter(adapter, output_dir, base=None, dtype=None, trust_remote_code=False) -> dict:
    """Merge the LoRA `adapter` into `base`, check the merged logits against base+adapter, save to `output_dir`, and
    return the `training_summary.json` written there."""
    start = time.perf_counter()
    try:
        peft_config = PeftConfig.from_pretrained(adapter)
    except Exception as e:
        raise ValueError(f"{adapter} is not a LoRA adapter folder (no readable adapter_config.json): {e}") from e
    base = base or peft_config.base_model_name_or_path
    if not base:
        raise ValueError(f"The adapter config in {adapter} names no base model: pass --base.")
    task_type = str(getattr(peft_config, "task_type", "") or "")
    classifier = task_type.endswith("SEQ_CLS")
    model = load_model(base, head="sequence-classification" if classifier else "causal-lm", device="cpu",
                       dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                       **({"num_labels": 1} if classifier else {}))
    peft_model = PeftModel.from_pretrained(model, adapter)
    peft_model.eval()

    # the same probe through base+adapter and through the merged weights
    generator = torch.Generator().manual_seed(0)
    probe = torch.randint(0, model.config.vocab_size, (2, 24), generator=generator).to(model.device)
    with torch.no_grad():
        expected = peft_model(input_ids=probe).logits.float()
        merged = peft_model.merge_and_unload()
        got = merged(input_ids=probe).logits.float()
    max_diff = (expected - got).abs().max().item()
    dtype_name = str(merged.dtype).replace("torch.", "")
    if max_diff > _TOLERANCE.get(dtype_name, 1e-4) * max(1.0, expected.abs().max().item()):
        raise RuntimeError(f"Merged logits differ from base+adapter by {max_diff:.3e}; not saving {output_dir}.")

    try:
        tokenizer = load_tokenizer(adapter, trust_remote_code=trust_remote_code)
    except RemoteCodeError:
        raise
    except (OSError, ValueError):  # the adapter folder has no tokenizer: take the base model's
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)

    adapter_summary = {}
    if (Path(adapter) / "training_summary.json").exists():
        adapter_summary = json.loads((Path(adapter) / "training_summary.json").read_text())
    summary = {
        "stage": "merge",
        "base_model": str(base),
        "adapter": str(adapter),
        "adapter_stage": adapter_summary.get("stage"),
        "datasets": adapter_summary.get("datasets", []),
        "data": adapter_summary.get("data", {}),
        "training_args": {"lora_r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
                          "target_modules": sorted(peft_config.target_modules or []), "dtype": dtype_name},
        "log_history": adapter_summary.get("log_history", []),
        "metrics": {**adapter_summary.get("metrics", {}), "max_abs_logit_diff": max_diff},
        "hardware": describe_hardware(),
        "train_runtime_s": round(time.perf_counter() - start, 2),
    }
    check_output_folder(output_dir)
    with atomic.folder(output_dir) as folder:  # the merged folder appears whole or not at all
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        portable_tokenizer_config(folder)
        atomic.write_json(folder / SUMMARY_FILE, json.loads(json.dumps(summary, default=str)))
        write_card(folder, name=Path(output_dir).resolve().name)
    return summary
