"""Find a model's config, tokenizer and weights (HF folder with safetensors, GGUF file, or dummy)."""
from __future__ import annotations

import glob
import os
import time
from typing import Iterator, Optional

import torch
from torch import nn

from vllm.logger import init_logger
from vllm.model_executor.layers.linear import default_init_
from vllm.model_executor.models.registry import get_model_class

logger = init_logger(__name__)

def is_gguf(path: str) -> bool:
    return path.endswith(".gguf") and os.path.isfile(path)


def resolve(model: str) -> str:
    from vllm.model_executor.model_loader.gguf_loader import resolve_model_path
    path = resolve_model_path(model)
    if not (os.path.isdir(path) or is_gguf(path)):
        raise ValueError(f"model={model!r}: no such folder or .gguf file (there is no model hub "
                         "here: pass a local Hugging Face folder, a .gguf, or "
                         "'SmolLM2-135M-Instruct')")
    return path


def load_hf_config(path: str, load_format: str):
    if is_gguf(path):
        # metadata only: the weights are dequantized once, by load_model in the runner
        from vllm.model_executor.model_loader.gguf_loader import gguf_config
        return gguf_config(path)
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(path)


def load_tokenizer(path: str, tokenizer: Optional[str]):
    src = tokenizer or path
    if is_gguf(src):
        from vllm.model_executor.model_loader.gguf_loader import load_gguf_tokenizer
        return load_gguf_tokenizer(src)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(src)
    except Exception as e:  # a shapes-only folder may carry no tokenizer
        logger.warning("No tokenizer loaded from %s (%s); text output disabled", src, e)
        return None


def _safetensors_weights(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import load_file
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        bins = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
        if not bins:
            raise ValueError(f"model folder {path!r} has no *.safetensors (or pytorch_model.bin)")
        for f in bins:
            yield from torch.load(f, map_location="cpu", weights_only=True).items()
        return
    for f in files:
        yield from load_file(f).items()


def load_model(hf_config, path: str, load_format: str, dtype: torch.dtype,
               device: torch.device, seed: int = 0, first_layer_idx: int = 0) -> nn.Module:
    t0 = time.perf_counter()
    cls = get_model_class((getattr(hf_config, "architectures", None) or ["LlamaForCausalLM"])[0])
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(hf_config, first_layer_idx=first_layer_idx)
    finally:
        torch.set_default_dtype(prev)
    if load_format == "dummy":
        default_init_(model, seed)
        model.apply(_reset_norms)
    else:
        weights = _gguf_weights(path) if is_gguf(path) else _safetensors_weights(path)
        loaded = model.load_weights(weights)
        missing = {n for n, _ in model.named_parameters()} - loaded
        if missing:
            raise ValueError(f"checkpoint {path!r} is missing tensors: {sorted(missing)[:8]}")
    model.eval()
    logger.info("Loaded %s (%s, %s) in %.1f s", type(model).__name__, load_format, dtype,
                time.perf_counter() - t0)
    return model


def _gguf_weights(path: str):
    from vllm.model_executor.model_loader.gguf_loader import load_gguf
    return load_gguf(path, dtype=torch.float32).state_dict.items()


def _reset_norms(m: nn.Module) -> None:
    # Dummy weights: norms at 1 keep activations in range over many layers.
    if type(m).__name__ in ("RMSNorm", "LayerNorm"):
        m.weight.data.fill_(1.0)
        if getattr(m, "bias", None) is not None:
            m.bias.data.zero_()
