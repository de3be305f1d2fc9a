"""The notebooks: each `.ipynb` matches its jupytext source (`notebooks/<name>.py`), carries no outputs, and runs top
to bottom offline wherever the package is installed.

The run copies the notebooks into one temporary folder outside the repository and executes them there, in order, in
fresh kernels of this interpreter, with no PYTHONPATH: they see only the installed package (its shipped recipes,
built-in corpus and synthetic datasets), as in a fresh environment or a hosted notebook service. A model one
notebook trained is reused by the next, as when a person runs them in order.
"""

import json
import math
import re
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "notebooks"
NAMES = sorted(p.stem for p in FOLDER.glob("[0-9]_*.py"))
REGENERATE = "jupytext --update --to ipynb notebooks/[0-9]_*.py"

# the pictures each notebook writes into outputs/notebooks/images/ of its working folder
IMAGES = {
    "1_tokenizers": ["tokenizers.png"],
    "2_inside_the_model": ["embeddings.png", "attention.png", "experts.png"],
    "3_train_and_sample": ["loss_curve.png", "temperature.png"],
    "4_post_training": ["post_training.png"],
    "5_calibration": ["reliability.png", "confidence.png"],
}


def test_every_notebook_has_a_source_and_no_outputs():
    assert NAMES == sorted(IMAGES), NAMES
    assert sorted(p.stem for p in FOLDER.glob("*.ipynb")) == NAMES
    for name in NAMES:
        notebook = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code, name
        dirty = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{name}.ipynb: cells {dirty} carry outputs or execution counts; regenerate it: {REGENERATE}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source(name):
    def cells(path):
        return [(c.cell_type, c.source) for c in jupytext.read(path).cells]

    assert cells(FOLDER / f"{name}.ipynb") == cells(FOLDER / f"{name}.py"), \
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py, its source: {REGENERATE}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_needs_no_checkout(name):
    code = "\n".join(c.source for c in nbformat.read(FOLDER / f"{name}.ipynb", as_version=4).cells
                     if c.cell_type == "code")
    for pattern in (r"sys\.path", r"os\.chdir", r"\.parents", r"PYTHONPATH", r"[\"']recipes/", r"[\"']src/",
                    r"notebooks/images"):
        assert not re.search(pattern, code), f"{name}: {pattern} ties the notebook to a source checkout"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    assert not folder.resolve().is_relative_to(ROOT)
    for name in NAMES:
        shutil.copy(FOLDER / f"{name}.ipynb", folder)
    return folder


def texts(notebook) -> str:
    """Everything the code cells printed or displayed, as text."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            parts.append(data.get("text/html", "") or data.get("text/plain", ""))
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


def numbers_after(text: str, label: str) -> list[float]:
    return [float(x) for x in re.findall(re.escape(label) + r"\s*([-\d.]+)", text)]


def check_tokenizers(out: str, runs: Path):
    per_byte = {kind: float(re.search(rf"{kind} +([\d.]+) tokens per byte", out)[1])
                for kind in ("bpe", "unigram", "char")}
    assert per_byte["bpe"] < per_byte["char"] and per_byte["unigram"] < per_byte["char"], per_byte
    restored = re.search(r"bpe +held-out documents restored exactly: (\d+)/(\d+)", out)
    assert restored and restored[1] == restored[2], "byte-level BPE must round-trip every held-out document"


def check_inside_the_model(out: str, runs: Path):
    assert "logits before the changed token equal: True" in out  # the causal mask
    assert re.search(r"logits at the changed token differ: +True", out)
    assert "one token at a time with the cache = the full forward pass: True" in out
    offsets = re.search(r"same offset, different positions: \[([^\]]*)\]", out)[1]
    scores = [float(x) for x in offsets.split(",")]
    assert max(scores) - min(scores) < 1e-3, scores  # RoPE: the score depends only on the distance
    assert "share of token slots per expert" in out


def check_train_and_sample(out: str, runs: Path):
    summary = json.loads((runs / "dense" / "training_summary.json").read_text())
    vocab_size = json.loads((runs / "dense" / "config.json").read_text())["vocab_size"]
    held = [e["eval_loss"] for e in summary["log_history"] if "eval_loss" in e]
    assert held and held[-1] < math.log(vocab_size) - 1, held  # well below a uniform guess
    assert out.count("<td><pre>") == 12  # 3 prompts × 4 decoding settings


def check_post_training(out: str, runs: Path):
    sft = json.loads((runs / "post-training" / "sft" / "training_summary.json").read_text())["metrics"]
    assert sft["eval_answer_accuracy"] > sft["initial_eval_answer_accuracy"] + 0.1, sft
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if re.match(r"(untrained|SFT|DPO|RL) +\d+%", line)}
    assert list(table) == ["untrained", "SFT", "DPO", "RL"] and all(len(v) == 3 for v in table.values()), table
    assert "RL mean reward per logged step" in out


def check_calibration(out: str, runs: Path):
    trained = json.loads((runs / "dense" / "eval_results.json").read_text())["metrics"]
    untrained = json.loads((runs / "untrained" / "eval_results.json").read_text())["metrics"]
    assert trained["accuracy"] > untrained["accuracy"] + 0.1, (trained, untrained)
    ece = numbers_after(out, "ECE")
    assert len(ece) == 3 and all(0 <= e < 0.2 for e in ece), ece  # trained, untrained, by hand
    assert "confidence 0.0-0.2:" in out
    assert (runs / "confidence.html").is_file()


CHECKS = {"1_tokenizers": check_tokenizers, "2_inside_the_model": check_inside_the_model,
          "3_train_and_sample": check_train_and_sample, "4_post_training": check_post_training,
          "5_calibration": check_calibration}


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, workdir, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the installed package only
    committed = {p.name: p.stat().st_mtime_ns for p in (FOLDER / "images").glob("*")}
    notebook = nbformat.read(workdir / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=900,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors  # nbclient raises on the first error; this guards against allow_errors creeping in
    assert all(c.execution_count for c in notebook.cells if c.cell_type == "code")
    runs = workdir / "outputs" / "notebooks"
    missing = [image for image in IMAGES[name] if not (runs / "images" / image).is_file()]
    assert not missing, f"{name} did not write {missing}"
    CHECKS[name](texts(notebook), runs)
    assert {p.name: p.stat().st_mtime_ns for p in (FOLDER / "images").glob("*")} == committed  # left as committed
