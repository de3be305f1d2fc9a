"""OpenLLM: build a language model end to end on the Hugging Face stack.

Importing the package registers `OpenLLMConfig`, `OpenLLMModel`, `OpenLLMForCausalLM` and
`OpenLLMForSequenceClassification` with transformers' Auto classes (model type `openllm`).
"""

from .models import (
    PRESETS,
    OpenLLMConfig,
    OpenLLMForCausalLM,
    OpenLLMForSequenceClassification,
    OpenLLMModel,
    get_preset_config,
)
from .versions import __version__

__all__ = ["__version__", "PRESETS", "OpenLLMConfig", "OpenLLMModel", "OpenLLMForCausalLM",
           "OpenLLMForSequenceClassification", "get_preset_config"]
