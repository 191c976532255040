"""Rotary position embedding in plain torch (rotate-half / NeoX layout): the reference of the
rotary kernels (vllm/model_executor/layers/fused_rotary.py) and of the fused rotary + KV-write
kernel (rope_kv_write.py). It lives beside the attention kernels so both can use it without an
import from the kernels up into the model layers."""
from __future__ import annotations

import torch


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                rotary_dim: int) -> torch.Tensor:
    xr = x[..., :rotary_dim].float()
    x1, x2 = xr.chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    if rotary_dim == x.shape[-1]:
        return out
    return torch.cat([out, x[..., rotary_dim:]], dim=-1)


def rotary_embedding_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin: torch.Tensor, rotary_dim: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch rotary_embedding (new tensors; q and k are not written)."""
    cs = cos_sin[positions]
    half = rotary_dim // 2
    cos = cs[:, None, :half]
    sin = cs[:, None, half:]
    return _rotate_ref(q, cos, sin, rotary_dim), _rotate_ref(k, cos, sin, rotary_dim)
