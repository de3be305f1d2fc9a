"""OpenLLM: build a language model end to end on the Hugging Face stack.

Importing the package registers `OpenLLMConfig`, `OpenLLMModel`, `OpenLLMForCausalLM` and
`OpenLLMForSequenceClassification` with transformers' Auto classes (model type `openllm`).
"""

__version__ = "0.1.0"

from .models import (  # noqa: E402  (the version is set first: modules below read it)
    PRESETS,
    OpenLLMConfig,
    OpenLLMForCausalLM,
    OpenLLMForSequenceClassification,
    OpenLLMModel,
    get_preset_config,
)

__all__ = ["__version__", "PRESETS", "OpenLLMConfig", "OpenLLMModel", "OpenLLMForCausalLM",
           "OpenLLMForSequenceClassification", "get_preset_config"]
