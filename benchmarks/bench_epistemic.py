"""The epistemic head against a 5-member deep ensemble, on the same tiny models and texts (issue #27).

    python benchmarks/run.py --only epistemic [--write-readme]

Five tiny OpenLLMs (preset `tiny`, seeds 0-4) are trained here on two synthetic tasks (addition, parity: "Question:
What is 3 + 4?\\nAnswer: 7"); member 0 gets an epistemic head, trained with the model frozen on the members' training
texts (`openllm epistemic-head`). Each method scores every text by its mean epistemic uncertainty per token, and
AUROC says how well that tells held-out questions of the two tasks (in domain) from: the same questions with their
tokens shuffled, English prose (paragraphs of this README), questions of a task no member was trained on (reversing
letters), and three sets that are out of domain only just (`near_sets`). In domain, NLL and ECE of the next token:
member 0's logits, the same model's with the head (identical: the head only reads them) and the ensemble's mean
distribution. Cost: seconds to score the in-domain texts (the same windows, batches of 32) with one model's forward
pass alone, with the head (the forward pass included), and with the ensemble; also one batch of a ~25M-parameter
model (preset `small`, random weights: cost only). Memory: weights. One thread, because the machine is shared (it
also makes the timings steadier); the medians of interleaved repeats.
"""

import random
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MEMBERS, STEPS, TEXTS, BATCH = 5, 300, 100, 32
IN_DOMAIN = ("addition", "parity")


def qa_text(example) -> str:
    return f"Question: {example['prompt']}\nAnswer: {example['answer']}"


def train_member(tokenizer, texts, seed: int, steps: int = STEPS, batch_size: int = 32, lr: float = 3e-3):
    import openllm

    torch.manual_seed(seed)
    config = openllm.get_preset_config("tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = openllm.OpenLLMForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    encoded = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for t in texts]
    rng = random.Random(seed)
    for _ in range(steps):
        batch = rng.sample(encoded, batch_size)
        width = max(map(len, batch))
        ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def prose(count: int) -> list[str]:
    """Sentences of this README's prose (no tables, code or lists): English in another domain than the tasks."""
    sentences = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if re.match(r"[A-Z][a-z]+ [a-z]", line) and "`" not in line and "|" not in line:
            sentences += [s for s in re.split(r"(?<=\.) ", line) if 30 <= len(s) <= 120]
    return sentences[:count]


def next_token_quality(log_probs_fn, model, tokenizer, texts) -> tuple[float, float]:
    """(NLL in nats per token, ECE of the top-1 probability) of the distribution `log_probs_fn` gives."""
    from openllm.evaluation.metrics import expected_calibration_error
    from openllm.evaluation.uncertainty import scored_batches

    nll, confidences, correct = [], [], []
    with torch.inference_mode():
        for input_ids, attention_mask, scored, _, targets in scored_batches(model, tokenizer, texts):
            log_probs = log_probs_fn(input_ids, attention_mask)[scored]
            nll.append(-log_probs.gather(-1, targets[:, None]).squeeze(-1))
            top = log_probs.max(-1)
            confidences.append(top.values.exp())
            correct.append(top.indices == targets)
    return float(torch.cat(nll).mean()), expected_calibration_error(torch.cat(confidences), torch.cat(correct))


def median_seconds(functions: dict, repeats: int = 5) -> dict:
    """Median wall time of each function, the functions run in turn (interleaved) so load changes hit all alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def weight_mib(*modules) -> float:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def forward_of(model):
    """One model's forward pass, nothing more: the baseline cost."""
    def token_uncertainty(input_ids, attention_mask, scored):
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return torch.zeros(int(scored.sum()), 3)
    return token_uncertainty


def near_sets(held_out: list[str], count: int, seed: int = 0) -> dict:
    """Out of domain, but only just: operands just past the tasks' (0-20), numbers longer than parity's (0-999), and
    the held-out questions with a wrong answer."""
    rng = random.Random(seed)
    pairs = [(rng.randint(21, 40), rng.randint(21, 40)) for _ in range(count)]
    numbers = [rng.randint(1000, 9999) for _ in range(count)]
    return {"addition of 21-40": [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a, b in pairs],
            "parity of 4 digits": [f"Question: Is {n} even or odd?\nAnswer: {('even', 'odd')[n % 2]}"
                                   for n in numbers],
            "wrong answers": [t.rsplit(" ", 1)[0] + f" {rng.randint(0, 40)}" for t in held_out]}


def small_model_cost() -> dict:
    """Seconds per batch (8 × 256 tokens) of a `small` model: its forward pass, and with the head."""
    import openllm

    torch.manual_seed(0)
    model = openllm.OpenLLMForCausalLM(openllm.get_preset_config("small", epistemic_head={})).eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 256))
    mask, scored = torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool)

    def with_head():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        model.epistemic_head(model.epistemic_head.features(out.hidden_states), out.logits)

    with torch.inference_mode():
        seconds = median_seconds({"forward": lambda: forward_of(model)(ids, mask, scored), "head": with_head,
                                  "five forwards": lambda: [forward_of(model)(ids, mask, scored) for _ in range(5)]},
                                 3)
    return {**seconds, "parameters": model.num_parameters(), "head_mib": weight_mib(model.epistemic_head),
            "model_mib": weight_mib(model) - weight_mib(model.epistemic_head)}


def run() -> dict:
    from openllm.evaluation.epistemic import add_epistemic_head, train_epistemic_head
    from openllm.evaluation.metrics import auroc
    from openllm.evaluation.uncertainty import (
        ensemble_uncertainty,
        head_uncertainty,
        shuffled_texts,
        uncertainty_by_text,
    )
    from openllm.tasks import make_example_tokenizer, make_task_examples

    tokenizer = make_example_tokenizer()
    train = [qa_text(e) for e in make_task_examples(IN_DOMAIN, n=3000, split="train")]
    held_out = [qa_text(e) for e in make_task_examples(IN_DOMAIN, n=TEXTS, split="test")]
    sets = {"tokens shuffled": shuffled_texts(tokenizer, held_out), "English prose": prose(TEXTS),
            "unseen task (reverse)": [qa_text(e) for e in make_task_examples(("reverse",), n=TEXTS, split="test")],
            **near_sets(held_out, TEXTS)}

    started = time.perf_counter()
    members = [train_member(tokenizer, train, seed) for seed in range(MEMBERS)]
    members_s = time.perf_counter() - started
    model = members[0]
    base_quality = next_token_quality(lambda i, a: torch.log_softmax(model(input_ids=i, attention_mask=a).logits, -1),
                                      model, tokenizer, held_out)
    started = time.perf_counter()
    add_epistemic_head(model)
    training = train_epistemic_head(model, tokenizer, train[:1000], steps=STEPS)
    head_s = time.perf_counter() - started

    methods = {"epistemic head": lambda texts: head_uncertainty(model, tokenizer, texts, batch_size=BATCH),
               f"ensemble of {MEMBERS}": lambda texts: ensemble_uncertainty(members, tokenizer, texts,
                                                                            batch_size=BATCH)}
    results = {}
    for name, score in methods.items():
        in_domain = score(held_out)
        scores = [s["epistemic"] for s in in_domain["sequences"]]
        results[name] = {"in domain": in_domain["epistemic"]}
        for set_name, texts in sets.items():
            u = score(texts)
            results[name][set_name] = (u["epistemic"], auroc(scores, [s["epistemic"] for s in u["sequences"]]))

    def ensemble_log_probs(i, a):
        stacked = torch.stack([torch.log_softmax(m(input_ids=i, attention_mask=a).logits, -1) for m in members])
        return stacked.logsumexp(0) - torch.log(torch.tensor(float(len(members))))

    quality = {"member 0": base_quality,
               "member 0 with the head": next_token_quality(
                   lambda i, a: torch.log_softmax(model(input_ids=i, attention_mask=a).logits, -1), model, tokenizer,
                   held_out),
               f"ensemble of {MEMBERS} (mean p)": next_token_quality(ensemble_log_probs, model, tokenizer, held_out)}
    with torch.inference_mode():
        seconds = median_seconds({
            "forward": lambda: uncertainty_by_text(model, tokenizer, held_out, forward_of(model), batch_size=BATCH),
            "head": lambda: methods["epistemic head"](held_out),
            "ensemble": lambda: methods[f"ensemble of {MEMBERS}"](held_out)})
    memory = {"model": weight_mib(model) - weight_mib(model.epistemic_head), "head": weight_mib(model.epistemic_head),
              "ensemble": sum(weight_mib(m) for m in members) - weight_mib(model.epistemic_head)}
    return {"results": results, "quality": quality, "seconds": seconds, "memory": memory, "training": training,
            "members_s": members_s, "head_s": head_s, "small": small_model_cost(),
            "parameters": members[1].num_parameters(), "set_names": list(sets)}


def markdown(r: dict) -> str:
    from readme import machine_description

    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").is_file() else "?"
    names = r["set_names"]
    lines = [f"{machine_description()}, one thread; load average {load} at the end (the machine is shared). "
             f"{MEMBERS} tiny models ({r['parameters']:,} parameters, {STEPS} steps each, {r['members_s']:.0f} s for "
             f"all) trained on addition and parity; the head (on member 0, model frozen, {STEPS} steps on 1,000 "
             f"training texts, {r['training']['tokens']:,} tokens) took {r['head_s']:.0f} s. Mean epistemic "
             f"uncertainty (nats/token) and the AUROC of telling {TEXTS} held-out questions from {TEXTS} texts of "
             "each other set, per text:", "",
             "| texts | " + " | ".join(f"{m}: epistemic | AUROC" for m in r["results"]) + " |",
             "|---|" + "---|---|" * len(r["results"]),
             "| held-out questions (in domain) | " + " | ".join(f"{row['in domain']:.4f} | -"
                                                              for row in r["results"].values()) + " |"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{row[name][0]:.4f} | {row[name][1]:.3f}"
                                                  for row in r["results"].values()) + " |")
    lines += ["", "| next token, in domain | NLL (nats) | ECE |", "|---|---|---|"]
    lines += [f"| {name} | {nll:.4f} | {ece:.4f} |" for name, (nll, ece) in r["quality"].items()]
    s, m, small = r["seconds"], r["memory"], r["small"]
    lines += ["", "| cost | one model's forward pass | with the epistemic head | ensemble of 5 |",
              "|---|---|---|---|",
              f"| scoring the in-domain texts (tiny) | {s['forward']:.3f} s | {s['head']:.3f} s "
              f"({s['head'] / s['forward']:.2f}×) | {s['ensemble']:.3f} s ({s['ensemble'] / s['forward']:.2f}×) |",
              f"| one batch of 8 × 256 tokens (`small`, {small['parameters'] / 1e6:.0f}M parameters) | "
              f"{small['forward']:.3f} s | {small['head']:.3f} s ({small['head'] / small['forward']:.2f}×) | "
              f"{small['five forwards']:.3f} s ({small['five forwards'] / small['forward']:.2f}×, forward passes "
              "alone) |",
              f"| weights (tiny) | {m['model']:.2f} MiB | + {m['head']:.3f} MiB | {m['ensemble']:.2f} MiB |",
              f"| weights (`small`) | {small['model_mib']:.0f} MiB | + {small['head_mib']:.3f} MiB | "
              f"{5 * small['model_mib']:.0f} MiB |"]
    return "\n".join(lines)


def main(write_readme: bool = False):
    from readme import write_section

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = markdown(run())
    finally:
        torch.set_num_threads(threads)
    print(table)
    if write_readme:
        write_section("epistemic", table)
    return table


if __name__ == "__main__":
    main(write_readme="--write-readme" in sys.argv)
