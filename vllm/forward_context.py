"""Per-forward data (attention metadata, the KV cache being used) that layers read without it
being threaded through every module's signature."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttentionMetadata:
    # T = tokens this step (maybe padded for a CUDA graph), R = requests (maybe padded)
    slot_mapping: torch.Tensor      # [T] int64, cache slot of each token; -1 = do not write
    block_tables: torch.Tensor      # [R, max_blocks] int32
    context_lens: torch.Tensor      # [R] int32, tokens already in the cache before this step
    query_start_loc: torch.Tensor   # [R + 1] int32
    token_req_idx: torch.Tensor     # [T] int32, request of each token; -1 = padding
    stage_index: Optional[torch.Tensor] = None  # [T] int64, NWOR staging row; -1 = not staged


@dataclass
class ForwardContext:
    attn_metadata: Optional[AttentionMetadata]
    kv_cache: Optional[torch.Tensor]      # [L, 2, num_blocks, block_size, Hkv, D]
    staging: Optional[torch.Tensor] = None  # [L, S, 2, Hkv, D] NWOR staging buffer


_CTX: Optional[ForwardContext] = None


def get_forward_context() -> ForwardContext:
    if _CTX is None:
        raise RuntimeError("model forward called outside set_forward_context()")
    return _CTX


@contextlib.contextmanager
def set_forward_context(ctx: ForwardContext):
    global _CTX
    prev, _CTX = _CTX, ctx
    try:
        yield
    finally:
        _CTX = prev
