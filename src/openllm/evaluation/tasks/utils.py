"""Datasets and scoring of OpenLLM's lm-evaluation-harness tasks. lm-eval imports this file from the task folder, so
it reads its data relative to itself and needs only `openllm` importable."""

import zlib
from pathlib import Path

import datasets

from openllm.data.text import load_eval_texts
from openllm.tasks import ANSWER, get_task

HERE = Path(__file__).resolve().parent
DEFAULT_HELDOUT = HERE / "data" / "heldout.jsonl"


def _test_split(rows: list[dict]):
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def heldout(data_files=None, text_column: str = "text", **_):
    """The texts of `data_files` (any file `openllm eval --dataset` reads; default: the shipped sample)."""
    texts, _split = load_eval_texts(str(data_files or DEFAULT_HELDOUT), text_column=text_column)
    return _test_split([{"text": t} for t in texts])


def _examples(synthetic_tasks="addition,parity,reverse", synthetic_size=300, synthetic_seed=0):
    names = synthetic_tasks if isinstance(synthetic_tasks, str) else ",".join(synthetic_tasks)
    return get_task(names).examples("test", int(synthetic_size), int(synthetic_seed))


def synthetic_choices(synthetic_tasks="addition,parity,reverse", synthetic_size=300, synthetic_seed=0, **_):
    rows = []
    for e in _examples(synthetic_tasks, synthetic_size, synthetic_seed):
        # a stable hash of the question puts the right answer first or second, half the time each
        first = zlib.crc32(e["prompt"].encode()) % 2 == 0
        rows.append({**e, "choices": [e["answer"], e["wrong"]] if first else [e["wrong"], e["answer"]],
                     "label": 0 if first else 1})
    return _test_split(rows)


def synthetic_questions(synthetic_tasks="addition,parity,reverse", synthetic_size=300, synthetic_seed=0, **_):
    return _test_split(_examples(synthetic_tasks, synthetic_size, synthetic_seed))


def process_answer(doc, results):
    return {"exact_match": float(ANSWER.evaluate(doc, results[0]))}
