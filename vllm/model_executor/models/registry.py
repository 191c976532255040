"""Architecture name (config.architectures[0]) -> model class."""
from __future__ import annotations

from vllm.model_executor.models.gpt2 import GPT2LMHeadModel
from vllm.model_executor.models.llama import LlamaForCausalLM

_MODELS = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "GPT2LMHeadModel": GPT2LMHeadModel,
}


def get_model_class(architecture: str):
    if architecture not in _MODELS:
        raise ValueError(f"model architecture {architecture!r} is not supported; "
                         f"supported: {sorted(_MODELS)}")
    return _MODELS[architecture]
