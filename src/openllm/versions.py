"""Versions of the packages a result was produced with: recorded in eval results, training summaries and model
cards, so a number can be traced to the code that made it."""

from importlib.metadata import PackageNotFoundError, version

__version__ = "0.1.0"  # the package's one version number (pyproject.toml reads it from here)
FRAMEWORKS = ("openllm-hf", "transformers", "torch", "tokenizers", "datasets", "accelerate", "peft", "trl")


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def framework_versions() -> dict:
    versions = {name: v for name in FRAMEWORKS if (v := package_version(name)) is not None}
    versions.setdefault("openllm-hf", __version__)  # a source checkout that was never installed
    return versions
