"""The paged KV cache's layout, which the attention kernels, the NWOR commit and the drafters'
own caches share: one tensor [L, 2, num_blocks, block_size, Hkv, D] (0 = K, 1 = V)."""
from __future__ import annotations

import torch


def kv_bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype) -> int:
    return num_layers * 2 * block_size * num_kv_heads * head_dim * torch.empty(
        (), dtype=dtype).element_size()


def allocate_kv_cache(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                      head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # One tensor, so one kernel can address every layer (the NWOR commit scatters all layers in
    # one launch).
    return torch.zeros(num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim,
                       dtype=dtype, device=device)
