"""NWOR commit: scatter the accepted draft tokens' K/V from the staging buffer into the paged
cache, all layers in one launch. Rejected (and unused) staging rows never reach the cache.

Trio: ``_commit_staged_kv_kernel`` (Triton), ``commit_staged_kv`` (public: kernel on CUDA, else the
reference), ``commit_staged_kv_ref`` (plain torch, what the CPU engine runs).
"""
from __future__ import annotations

import torch

from vllm.platform import has_triton, use_triton
from vllm.v1.attention.kv_write import PADDING_SLOT_ID, kernel_for  # noqa: F401

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _commit_staged_kv_kernel(
        staging_ptr, cache_ptr, slots_ptr,
        stride_s_l, stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
        stride_c_l, stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
        NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # Program (staging row s, layer l) copies K and V [Hkv, D] of that row if it has a slot.
        s = tl.program_id(0).to(tl.int64)
        layer = tl.program_id(1).to(tl.int64)
        slot = tl.load(slots_ptr + s).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        ok = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM) & (slot >= 0)
        hd_s = offs_h[:, None] * stride_s_h + offs_d[None, :] * stride_s_d
        src = staging_ptr + layer * stride_s_l + s * stride_s_row + hd_s
        safe = tl.where(slot >= 0, slot, 0)
        dst = (cache_ptr + layer * stride_c_l + (safe // BLOCK_SIZE) * stride_c_blk
               + (safe % BLOCK_SIZE) * stride_c_off
               + offs_h[:, None] * stride_c_h + offs_d[None, :] * stride_c_d)
        k = tl.load(src, mask=ok, other=0.0)
        v = tl.load(src + stride_s_kv, mask=ok, other=0.0)
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + stride_c_kv, v.to(cache_ptr.dtype.element_ty), mask=ok)


def commit_staged_kv(staging: torch.Tensor, kv_cache: torch.Tensor, commit_slots: torch.Tensor,
                     force_triton: bool = False) -> None:
    """staging [L, S, 2, Hkv, D], kv_cache [L, 2, NB, BS, Hkv, D], commit_slots [S] int64 (cache
    slot of staged row s if accepted, -1 otherwise). One launch, grid (S, L), no host sync:
    CUDA-graph capturable. ``force_triton`` runs the kernel on CPU tensors (interpreter, tests)."""
    if not (force_triton or use_triton(staging.device)):
        commit_staged_kv_ref(staging, kv_cache, commit_slots)
        return
    L, S, _, H, D = staging.shape
    if S == 0 or L == 0:
        return
    kernel = kernel_for(_commit_staged_kv_kernel, staging.device)
    kernel[(S, L)](
        staging, kv_cache, commit_slots, *staging.stride(), *kv_cache.stride(),
        NUM_KV_HEADS=H, HEAD_DIM=D, BLOCK_SIZE=kv_cache.shape[3],
        BLOCK_H=triton.next_power_of_2(H), BLOCK_D=triton.next_power_of_2(D),
        num_warps=4 if H * D >= 1024 else 2,
    )


def commit_staged_kv_ref(staging: torch.Tensor, kv_cache: torch.Tensor,
                         commit_slots: torch.Tensor) -> None:
    """Plain-torch commit (boolean mask: a host sync on CUDA, fine on the CPU)."""
    keep = commit_slots >= 0
    if not bool(keep.any()):
        return
    block_size = kv_cache.shape[3]
    slots = commit_slots[keep].long()
    rows = staging[:, keep]                               # [L, n, 2, Hkv, D]
    blk, off = slots // block_size, slots % block_size
    # kv_cache[:, kv, blk, off] is [L, n, Hkv, D] for both halves.
    kv_cache[:, 0, blk, off] = rows[:, :, 0].to(kv_cache.dtype)
    kv_cache[:, 1, blk, off] = rows[:, :, 1].to(kv_cache.dtype)
