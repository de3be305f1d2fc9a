"""OpenLLM model classes, registered with transformers' Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_openllm import OpenLLMConfig
from .modeling_openllm import (
    OpenLLMForCausalLM,
    OpenLLMForSequenceClassification,
    OpenLLMModel,
    OpenLLMPreTrainedModel,
    expert_load,
    load_balancing_loss,
    router_z_loss,
)
from .presets import PRESETS, get_preset_config

AutoConfig.register(OpenLLMConfig.model_type, OpenLLMConfig, exist_ok=True)
AutoModel.register(OpenLLMConfig, OpenLLMModel, exist_ok=True)
AutoModelForCausalLM.register(OpenLLMConfig, OpenLLMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(OpenLLMConfig, OpenLLMForSequenceClassification, exist_ok=True)

# `save_pretrained` then writes `auto_map` and copies the configuration and modeling files into the checkpoint.
OpenLLMConfig.register_for_auto_class()
OpenLLMModel.register_for_auto_class("AutoModel")
OpenLLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
OpenLLMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "OpenLLMConfig",
    "OpenLLMPreTrainedModel",
    "OpenLLMModel",
    "OpenLLMForCausalLM",
    "OpenLLMForSequenceClassification",
    "PRESETS",
    "get_preset_config",
    "load_balancing_loss",
    "router_z_loss",
    "expert_load",
]
