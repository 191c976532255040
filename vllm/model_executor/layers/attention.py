"""Attention over the paged KV cache: rotate q / k, write this step's K/V (or stage them, NWOR),
then attend to [cached context + this step's tokens, causal within the step]."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vllm import envs
from vllm.forward_context import get_forward_context
from vllm.v1.attention.kv_write import write_kv
from vllm.v1.attention.paged_attention import paged_attention
from vllm.v1.attention.rope_kv_write import rope_write_kv


class Attention(nn.Module):
    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        # Read once at build time, not per layer per step (the eager path's host cost).
        self.fuse = not envs.get("VLLM_DISABLE_KERNEL_FUSION")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: Optional[torch.Tensor] = None, rotary=None) -> torch.Tensor:
        # q [T, Hq, D], k/v [T, Hkv, D] (rotary: a RotaryEmbedding applied to q and k first,
        # fused with the cache write) -> [T, Hq * D]
        ctx = get_forward_context()
        md = ctx.attn_metadata
        kv_layer = ctx.kv_cache[self.layer_idx]
        staging = stage_index = None
        if md.stage_index is not None and ctx.staging is not None:
            staging = ctx.staging[self.layer_idx]
            stage_index = md.stage_index
        if rotary is not None and self.fuse:
            q, k = rope_write_kv(positions, q, k, v, rotary.cos_sin, rotary.rotary_dim, kv_layer,
                                 md.slot_mapping, staging, stage_index)
        else:
            if rotary is not None:
                q, k = rotary(positions, q, k)
            write_kv(k, v, kv_layer, md.slot_mapping, staging=staging, stage_index=stage_index)
        out = paged_attention(q, k, v, kv_layer, md.block_tables, md.context_lens,
                              md.query_start_loc, md.token_req_idx, self.scale)
        return out.view(q.shape[0], self.num_heads * self.head_dim)
