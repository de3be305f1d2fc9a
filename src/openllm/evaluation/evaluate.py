"""`openllm eval`: every evaluation of one model in one report, `eval_results.json`.

    openllm eval MODEL --dataset held_out.jsonl --output-dir MODEL     # writes eval_results.json, reliability.png
    openllm eval MODEL --dataset Salesforce/wikitext --dataset-config wikitext-2-raw-v1 --split test --json
    openllm eval MODEL --tasks openllm_heldout,hellaswag --answers openllm:mix --output-dir MODEL

- `--dataset`: perplexity, bits per byte, calibration and samples on held-out texts (`perplexity`);
- `--ensemble`, or a model with an epistemic head (`openllm epistemic-head`): epistemic vs aleatoric uncertainty on
  the same texts (`uncertainty`);
- `--tasks`: lm-evaluation-harness tasks (`harness`);
- `--answers`: answer accuracy and selective prediction on checkable questions (`answers`).
Results of a run without `--dataset` join the held-out numbers already in `--output-dir`.
"""

import json
import sys
from pathlib import Path

from ..data.text import add_text_arguments, load_args_texts
from ..models.loading import add_loading_arguments, load_causal_lm
from ..versions import framework_versions
from .answers import RISK_COVERAGE_FILE, evaluate_answers, save_risk_coverage, synthetic_questions
from .harness import format_lm_eval, run_lm_eval
from .perplexity import RELIABILITY_FILE, RESULTS_FILE, evaluate_model, save_plot, save_results
from .uncertainty import ensemble_uncertainty, head_uncertainty, load_ensemble


def format_results(results: dict) -> str:
    """A table for people."""
    lines = [str(results["model"])]
    if "metrics" in results:
        lines = _format_metrics(results)
    if "uncertainty" in results:
        u = results["uncertainty"]
        source = f"ensemble of {u['members']}" if "members" in u else f"epistemic head, {u['samples']} indices"
        lines += ["", f"uncertainty ({source}, nats/token): total {u['total']:.4f} = aleatoric "
                  f"{u['aleatoric']:.4f} + epistemic {u['epistemic']:.4f}"]
    if "lm_eval" in results:
        lines.append(format_lm_eval(results["lm_eval"]))
    if "answers" in results:
        a = results["answers"]
        lines += ["", f"answers to {a['questions']} held-out questions ({a['tasks']}): accuracy {a['accuracy']:.4f}",
                  f"AURC {a['aurc']:.4f} ranked by confidence (random ranking {a['random_aurc']:.4f}, oracle "
                  f"{a['oracle_aurc']:.4f}); lower is better"]
    return "\n".join(lines)


def _format_metrics(results: dict) -> list[str]:
    m, d, s = results["metrics"], results["dataset"], results["settings"]
    name = (d["name"] or "texts") + (f" ({d['split']})" if d["split"] else "")
    lines = [
        f"{results['model']} on {name}: {d['texts']:,} texts, {d['tokens']:,} tokens, {d['bytes']:,} bytes",
        f"block size {s['block_size']}, stride {s['stride']}, {s['dtype']}, {results['runtime_s']:.1f} s",
        "",
        f"{'metric':<16}{'value':>12}",
        f"{'-' * 28}",
        f"{'loss (nats/tok)':<16}{m['loss']:>12.4f}",
        f"{'perplexity':<16}{m['perplexity']:>12.3f}",
        f"{'bits per byte':<16}{m['bits_per_byte']:>12.4f}",
        f"{'top-1 accuracy':<16}{m['accuracy']:>12.4f}",
        f"{'ECE (15 bins)':<16}{m['ece']:>12.4f}",
        f"{'Brier':<16}{m['brier']:>12.4f}",
    ]
    for sample in results.get("samples", []):
        lines += ["", f"prompt      {sample['prompt']}", f"completion  {sample['completion']}"]
    return lines


def save(results: dict, output_dir) -> Path:
    """`eval_results.json` and its plots (reliability diagram, risk-coverage curve) in `output_dir`."""
    if "answers" in results:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        results["risk_coverage_plot"] = save_plot(lambda png: save_risk_coverage(results["answers"], png),
                                                  Path(output_dir) / RISK_COVERAGE_FILE)
    return save_results(results, output_dir)


def add_arguments(parser):
    parser.add_argument("model", help="model folder (save_pretrained + tokenizer) or Hub id")
    add_text_arguments(parser, "held-out texts", required=False)
    parser.add_argument("--block-size", type=int, help="tokens per window (default: the model's context, ≤ 2048)")
    parser.add_argument("--stride", type=int, help="new tokens scored per window (default: block size / 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=3, help="sample generations to include (0 for none)")
    parser.add_argument("--prompt", action="append", dest="prompts", help="prompt of a sample generation (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample generations")
    parser.add_argument("--output-dir", help=f"write {RESULTS_FILE} and {RELIABILITY_FILE} here (e.g. the model)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    add_loading_arguments(parser)
    harness = parser.add_argument_group("lm-evaluation-harness (pip install 'openllm-hf[eval]')")
    harness.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. openllm_heldout,openllm_synthetic_mc,"
                         "openllm_synthetic_gen (offline, shipped) or hellaswag,arc_easy,gsm8k,wikitext (Hub)")
    harness.add_argument("--include-path", action="append", help="a folder of your own task YAMLs (repeatable)")
    harness.add_argument("--limit", type=int, help="at most N examples per lm-eval task")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples per lm-eval prompt (default: the task's)")
    parser.add_argument("--ensemble", action="append", metavar="MODEL", help="another checkpoint with the same "
                        "tokenizer (repeatable): splits uncertainty on --dataset into aleatoric and epistemic")
    answers = parser.add_argument_group("answer accuracy and selective prediction")
    answers.add_argument("--answers", metavar="TASKS", help="answer held-out synthetic questions (openllm:mix, "
                         "openllm:addition, or addition,parity,reverse) and rank them by confidence (AURC)")
    answers.add_argument("--answers-size", type=int, default=200, help="number of questions (default 200)")
    answers.add_argument("--chat", action="store_true", help="ask the questions through the chat template")


def run(args) -> int:
    try:
        if args.dataset is None and args.tasks is None and args.answers is None:
            raise ValueError("Nothing to evaluate: pass --dataset (held-out texts), --tasks (lm-eval tasks) and/or "
                             "--answers (checkable questions).")
        if args.max_samples is not None and args.max_samples < 1:
            raise ValueError(f"--max-samples must be at least 1, got {args.max_samples}.")
        texts = None
        if args.dataset is not None:
            texts, split = load_args_texts(args)
        model, tokenizer = load_causal_lm(args.model, device=args.device, dtype=args.dtype, revision=args.revision,
                                          trust_remote_code=args.trust_remote_code)
        if texts is not None:
            info = {"name": args.dataset, "config": args.dataset_config, "split": split,
                    "text_column": args.text_column}
            results = evaluate_model(model, tokenizer, texts, block_size=args.block_size, stride=args.stride,
                                     batch_size=args.batch_size, num_samples=args.num_samples,
                                     sample_prompts=args.prompts, seed=args.seed, model_name=args.model,
                                     dataset_info=info, show_progress=not args.json and sys.stderr.isatty())
        elif args.output_dir and (Path(args.output_dir) / RESULTS_FILE).is_file():
            # lm-eval or answers alone: their results join the held-out numbers already there
            results = json.loads((Path(args.output_dir) / RESULTS_FILE).read_text(encoding="utf-8"))
        else:
            results = {"model": args.model, "framework_versions": framework_versions()}
        if args.ensemble:
            if texts is None:
                raise ValueError("--ensemble measures uncertainty on held-out texts: pass them with --dataset.")
            members = [model] + load_ensemble(args.ensemble, tokenizer, device=args.device, dtype=args.dtype,
                                              trust_remote_code=args.trust_remote_code)
            results["uncertainty"] = ensemble_uncertainty(members, tokenizer, texts, block_size=args.block_size,
                                                          stride=args.stride, batch_size=args.batch_size)
            results["uncertainty"]["ensemble"] = [args.model] + args.ensemble
        elif texts is not None and getattr(model, "epistemic_head", None) is not None:
            results["uncertainty"] = head_uncertainty(model, tokenizer, texts, block_size=args.block_size,
                                                      stride=args.stride, batch_size=args.batch_size)
        if args.tasks is not None:
            # `openllm_heldout` scores the same texts as `--dataset` (a local file), so the two can be compared
            metadata = {"data_files": args.dataset, "text_column": args.text_column} \
                if args.dataset and Path(args.dataset).is_file() else {}
            results["lm_eval"] = run_lm_eval(model, tokenizer, args.tasks, include_path=args.include_path,
                                             limit=args.limit, batch_size=args.batch_size, metadata=metadata,
                                             num_fewshot=args.num_fewshot, seed=args.seed)
        if args.answers is not None:
            results["answers"] = evaluate_answers(model, tokenizer,
                                                  synthetic_questions(args.answers, args.answers_size, args.seed),
                                                  chat=args.chat, show_progress=not args.json and sys.stderr.isatty())
            results["answers"]["tasks"] = args.answers
        if args.output_dir is not None:
            save(results, args.output_dir)
    except (OSError, ValueError, TypeError) as error:
        print(f"openllm eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2, ensure_ascii=False) if args.json else format_results(results))
    return 0
