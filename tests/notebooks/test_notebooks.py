"""The notebooks run top to bottom without an error, offline, and are committed without outputs.

Each notebook runs in a fresh kernel (this interpreter's `python3` kernel) in one working folder shared by the
module, which holds links to this checkout's `recipes/`, `src/` and `model_cards/`: the notebooks find the
repository root from their working folder, so a run here writes only into the temporary folder, and a model that
one notebook trained is reused by the next, as when a person runs them in order.
"""

import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in FOLDER.glob("*.ipynb"))


def test_every_notebook_is_committed_without_outputs():
    assert len(NOTEBOOKS) == 5, NOTEBOOKS
    for name in NOTEBOOKS:
        notebook = nbformat.read(FOLDER / name, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code, name
        dirty = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{name}: cells {dirty} carry outputs or execution counts; clear them before committing " \
                          "(python notebooks/build_notebooks.py rewrites them clean)"


def test_notebooks_match_their_sources():
    """notebooks/build_notebooks.py is the source; the committed files are exactly what it writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", FOLDER / "build_notebooks.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == NOTEBOOKS
    for name in NOTEBOOKS:
        assert nbformat.read(FOLDER / name, as_version=4) == build.build(name), \
            f"{name} differs from its source: run python notebooks/build_notebooks.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    for name in ("recipes", "src", "model_cards"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, workdir, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(FOLDER / name, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=900,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors  # nbclient raises on the first error; this guards against allow_errors creeping in
    executed = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in executed)
    images = workdir / "outputs" / "notebooks" / "images"
    assert images.is_dir() and any(images.glob("*.png"))
    assert not (workdir / "notebooks").exists()  # pictures went to the run's folder, not into the checkout
