"""`openllm tasks`: list, write and score the checkable tasks from the command line."""

import json

from openllm.tasks import get_task
from openllm_cli import main


def test_write_gives_each_stage_its_format(tmp_path, capsys):
    assert main(["tasks", "write", "openllm:addition", "--output-dir", str(tmp_path), "--train-size", "12",
                 "--test-size", "4"]) == 0
    task = get_task("openllm:addition")
    for folder, stage in (("sft", "sft"), ("preference", "dpo"), ("prompts", "rlhf")):
        rows = [json.loads(line) for line in (tmp_path / folder / "test.jsonl").read_text().splitlines()]
        assert rows == task.format(task.examples("test", 4, 0), stage, "conversational")
    assert "prompts    " in capsys.readouterr().out


def test_list_names_every_task(capsys):
    assert main(["tasks", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:2] == ["openllm:mix", "openllm:addition"] and "openllm:word-problems" in names


def test_eval_scores_a_model_on_held_out_questions(tiny_base, capsys):
    assert main(["tasks", "eval", str(tiny_base), "--task", "openllm:addition-cot", "--n", "6", "--k", "2",
                 "--max-new-tokens", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6 and result["exact_match"] == 0.0  # an untrained model solves nothing
    assert set(result) == {"exact_match", "well_formed", "n", "pass@1_t1", "pass@2_t1"}


def test_unknown_task_is_one_clear_line(capsys):
    assert main(["tasks", "write", "openllm:algebra", "--output-dir", "unused"]) == 2
    assert "Unknown task 'openllm:algebra'. Choose from: openllm:mix" in capsys.readouterr().err
