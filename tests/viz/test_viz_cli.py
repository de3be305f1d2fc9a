import html
import re

import pytest
from viz_helpers import read_png

from openllm_cli import main


def test_attention_experts_and_confidence_files(moe_model_dir, lm_tokenizer, tmp_path, capsys):
    model = str(moe_model_dir)
    assert main(["viz", "attention", model, "--prompt", "The quick brown fox", "--out", str(tmp_path / "a.png"),
                 "--layers", "1"]) == 0
    assert main(["viz", "experts", model, "--prompt", "The quick brown fox", "--out", str(tmp_path / "e.png")]) == 0
    html_out = str(tmp_path / "c.html")
    assert main(["viz", "confidence", model, "--text", "The quick <brown> fox", "--out", html_out]) == 0
    assert main(["viz", "confidence", model, "--text", "The quick brown fox", "--out", str(tmp_path / "c.png")]) == 0
    for name in ("a.png", "e.png", "c.png"):
        read_png(tmp_path / name)
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    body = page[page.index('<div class="text">') + 18:page.index("</div>")]
    assert html.unescape(re.sub(r"<[^>]+>", "", body)) == "The quick <brown> fox"
    assert body.count('<span class="tok"') == len(lm_tokenizer.tokenize("The quick <brown> fox"))  # one per token
    assert f"Wrote {tmp_path / 'c.html'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["attention", "{model}", "--prompt", "x", "--out", "{tmp}/a.jpg"], "written as .png; change the file name"),
    (["attention", "{model}", "--prompt", "x", "--out", "{tmp}/a.png", "--layers", "7"],
     "No layer 7: the model has 2"),
    (["experts", "{dense}", "--prompt", "x", "--out", "{tmp}/e.png"], "needs a Mixture-of-Experts model"),
    (["confidence", "{tmp}/missing", "--text", "x", "--out", "{tmp}/c.html"], "missing"),
])
def test_bad_input_is_one_error_line(moe_model_dir, tiny_model_dir, tmp_path, capsys, argv, message):
    argv = [a.format(model=moe_model_dir, dense=tiny_model_dir, tmp=tmp_path) for a in argv]
    assert main(["viz", *argv]) == 2
    error, hint = capsys.readouterr().err.strip().splitlines()[-2:]  # after any progress bars of the model loading
    assert error.startswith("openllm viz: error: ") and message in error and hint.startswith("(set OPENLLM_DEBUG=1")
    assert not any(tmp_path.glob("*.png")) and not any(tmp_path.glob("*.html"))
