"""OpenLLM: build a language model end to end on the Hugging Face stack."""

__version__ = "0.1.0"

from .models import (  # noqa: E402  (importing registers the Auto classes)
    PRESETS,
    OpenLLMConfig,
    OpenLLMForCausalLM,
    OpenLLMForSequenceClassification,
    OpenLLMModel,
    get_preset_config,
)

__all__ = [
    "__version__",
    "PRESETS",
    "OpenLLMConfig",
    "OpenLLMModel",
    "OpenLLMForCausalLM",
    "OpenLLMForSequenceClassification",
    "get_preset_config",
]
