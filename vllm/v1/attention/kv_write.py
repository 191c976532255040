"""Write this step's K/V into the paged cache (and, in NWOR stage mode, into the staging buffer).

Trio: ``_write_kv_kernel`` (Triton), ``write_kv`` (public: kernel on CUDA, else the reference),
``write_kv_ref`` (plain torch, what the CPU engine runs).

Layout: one layer's cache ``[2, num_blocks, block_size, Hkv, D]`` (0 = K, 1 = V); token t goes to
slot ``slot_mapping[t] = block_id * block_size + offset``; slot ``PADDING_SLOT_ID`` (-1) = skip.
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.platform import has_triton, kernel_enabled, kernel_for

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _kv_targets(t, slot_ptr, stage_idx_ptr, HAS_STAGING: tl.constexpr):
        """Token t's cache slot and staging row, and whether each is written (-1: not)."""
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if HAS_STAGING:
            row = tl.load(stage_idx_ptr + t).to(tl.int64)
        else:
            row = slot * 0 - 1
        return slot, slot >= 0, row, row >= 0

    @triton.jit
    def _store_kv_tile(k, v, slot, write_cache, row, write_stage, hd_ok, offs_h, offs_d,
                       cache_ptr, staging_ptr,
                       stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
                       stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
                       BLOCK_SIZE: tl.constexpr, HAS_STAGING: tl.constexpr):
        """Stores one token's K and V tiles [H, D] into its cache slot and / or staging row
        (shared by the plain write and the fused rotary + write kernel)."""
        blk = tl.where(write_cache, slot, 0) // BLOCK_SIZE
        off = tl.where(write_cache, slot, 0) % BLOCK_SIZE
        c_off = (blk * stride_c_blk + off * stride_c_off + offs_h[:, None] * stride_c_h
                 + offs_d[None, :] * stride_c_d)
        c_ok = hd_ok & write_cache
        tl.store(cache_ptr + c_off, k.to(cache_ptr.dtype.element_ty), mask=c_ok)
        tl.store(cache_ptr + stride_c_kv + c_off, v.to(cache_ptr.dtype.element_ty), mask=c_ok)
        if HAS_STAGING:
            s_off = (tl.where(write_stage, row, 0) * stride_s_row + offs_h[:, None] * stride_s_h
                     + offs_d[None, :] * stride_s_d)
            s_ok = hd_ok & write_stage
            tl.store(staging_ptr + s_off, k.to(staging_ptr.dtype.element_ty), mask=s_ok)
            tl.store(staging_ptr + stride_s_kv + s_off, v.to(staging_ptr.dtype.element_ty),
                     mask=s_ok)


    @triton.jit
    def _write_kv_kernel(
        key_ptr, value_ptr, cache_ptr, slot_ptr, staging_ptr, stage_idx_ptr,
        stride_kt, stride_kh, stride_kd,
        stride_vt, stride_vh, stride_vd,
        stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
        stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
        NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, HAS_STAGING: tl.constexpr,
    ):
        # One program per token: its [Hkv, D] K and V tiles go to the cache slot and/or staging row.
        t = tl.program_id(0).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        hd_ok = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)

        slot, write_cache, row, write_stage = _kv_targets(t, slot_ptr, stage_idx_ptr,
                                                          HAS_STAGING)
        # Padded tokens (slot -1, stage -1) read and write nothing.
        ld_ok = hd_ok & (write_cache | write_stage)
        k = tl.load(key_ptr + t * stride_kt + offs_h[:, None] * stride_kh
                    + offs_d[None, :] * stride_kd, mask=ld_ok, other=0.0)
        v = tl.load(value_ptr + t * stride_vt + offs_h[:, None] * stride_vh
                    + offs_d[None, :] * stride_vd, mask=ld_ok, other=0.0)
        _store_kv_tile(k, v, slot, write_cache, row, write_stage, hd_ok, offs_h, offs_d,
                       cache_ptr, staging_ptr,
                       stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
                       stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
                       BLOCK_SIZE, HAS_STAGING)


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache_layer: torch.Tensor,
             slot_mapping: torch.Tensor, staging: Optional[torch.Tensor] = None,
             stage_index: Optional[torch.Tensor] = None, force_triton: bool = False) -> None:
    """key/value [T, Hkv, D] (any strides) -> kv_cache_layer [2, NB, BS, Hkv, D] at slot_mapping [T]
    (-1 = skip); if staging [S, 2, Hkv, D] is given, also row stage_index[t] (-1 = not staged).

    One launch, grid (T,), no host sync: CUDA-graph capturable. ``force_triton`` launches the
    kernel on CPU tensors through the Triton interpreter (tests)."""
    if not kernel_enabled(key.device, force_triton):
        write_kv_ref(key, value, kv_cache_layer, slot_mapping, staging, stage_index)
        return
    T, H, D = key.shape
    if T == 0:
        return
    has_staging = staging is not None
    if has_staging:
        assert stage_index is not None and stage_index.shape[0] == T
        st, st_idx = staging, stage_index
        st_strides = staging.stride()
    else:
        st, st_idx = kv_cache_layer, slot_mapping  # dummies, never touched
        st_strides = (0, 0, 0, 0)
    kernel = kernel_for(_write_kv_kernel, key.device)
    kernel[(T,)](
        key, value, kv_cache_layer, slot_mapping, st, st_idx,
        *key.stride(), *value.stride(), *kv_cache_layer.stride(), *st_strides,
        NUM_KV_HEADS=H, HEAD_DIM=D, BLOCK_SIZE=kv_cache_layer.shape[2],
        BLOCK_H=triton.next_power_of_2(H), BLOCK_D=triton.next_power_of_2(D),
        HAS_STAGING=has_staging, num_warps=4 if H * D >= 1024 else 2,
    )


def write_kv_ref(key: torch.Tensor, value: torch.Tensor, kv_cache_layer: torch.Tensor,
                 slot_mapping: torch.Tensor, staging: Optional[torch.Tensor] = None,
                 stage_index: Optional[torch.Tensor] = None) -> None:
    """Plain-torch write_kv (boolean masks: a host sync on CUDA, fine on the CPU)."""
    block_size = kv_cache_layer.shape[2]
    keep = slot_mapping >= 0
    if bool(keep.any()):
        slots = slot_mapping[keep].long()
        blk, off = slots // block_size, slots % block_size
        # Advanced indexing on (block, offset) works for any strides of the layer view.
        kv_cache_layer[0, blk, off] = key[keep].to(kv_cache_layer.dtype)
        kv_cache_layer[1, blk, off] = value[keep].to(kv_cache_layer.dtype)
    if staging is not None and stage_index is not None:
        staged = stage_index >= 0
        if bool(staged.any()):
            rows = stage_index[staged].long()
            staging[rows, 0] = key[staged].to(staging.dtype)
            staging[rows, 1] = value[staged].to(staging.dtype)
