"""Rotary position embedding (rotate-half / NeoX layout, as Hugging Face Llama and Qwen2 use)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from vllm.model_executor.layers.fused_rotary import rotary_embedding


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    # Llama 3.1 frequency scaling: long wavelengths divided by `factor`, short ones kept,
    # a smooth ramp between (from the published Llama 3.1 rope_scaling parameters).
    factor = scaling["factor"]
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    return torch.where(is_mid, mid, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float,
                 scaling: Optional[dict] = None, rotary_dim: Optional[int] = None):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float64)
                                   / self.rotary_dim))
        if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(f"rope_scaling={scaling} is not supported")
        t = torch.arange(max_position, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)
        # [max_position, rotary_dim]: cos then sin halves, kept in fp32 for accuracy.
        self.register_buffer("cos_sin", torch.cat([freqs.cos(), freqs.sin()], -1).float(),
                             persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # positions [T]; q [T, Hq, D]; k [T, Hkv, D] -> (q_rot, k_rot). On CUDA one fused kernel
        # rotates q and k IN PLACE (views of qkv: no copy) and returns them; elsewhere new
        # tensors (see fused_rotary.py). Callers must use the returned tensors.
        return rotary_embedding(positions, q, k, self.cos_sin, self.rotary_dim)
