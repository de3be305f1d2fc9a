"""OpenLLM: build a language model end to end on the Hugging Face stack.

Imports are lazy, so `openllm --help` does not load torch. The model classes (and their registration with
transformers' Auto classes) load on first use: `from openllm import OpenLLMForCausalLM`, or `import openllm.models`.
"""

__version__ = "0.1.0"

_MODEL_EXPORTS = ("PRESETS", "OpenLLMConfig", "OpenLLMModel", "OpenLLMForCausalLM", "OpenLLMForSequenceClassification",
                  "get_preset_config")

__all__ = ["__version__", *_MODEL_EXPORTS]


def __getattr__(name):
    if name in _MODEL_EXPORTS:
        from . import models  # importing registers the Auto classes

        return getattr(models, name)
    raise AttributeError(f"module 'openllm' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MODEL_EXPORTS])
