"""The `openllm` command: bad input ends with one line saying what to fix, and exit status 2."""

import pytest

from openllm.cli import main


@pytest.mark.parametrize("argv, message", [
    (["serve", "/no/such/model"], "Model folder '/no/such/model' does not exist"),
    (["generate", "./missing", "--prompt", "hi"], "Model folder './missing' does not exist"),
    (["tokenizer", "train", "--corpus", "/no/such.txt", "--output", "/tmp/unused"], "No file or folder matches"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("OPENLLM_DEBUG", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"openllm {argv[0]}: error: " in err and message in err and "Traceback" not in err


def test_debug_variable_shows_the_exception(monkeypatch):
    monkeypatch.setenv("OPENLLM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["serve", "/no/such/model"])
