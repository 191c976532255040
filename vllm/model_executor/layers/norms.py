"""RMSNorm (Llama family) with an optional fused residual add, and LayerNorm (GPT-2)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vllm.model_executor.layers.fused_norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        # With a residual: returns (norm(x + residual), x + residual), the pre-norm pattern.
        # One fused kernel on CUDA; the exact torch formula elsewhere (see fused_norm.py).
        return rms_norm(x, self.weight, self.eps, residual)


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
