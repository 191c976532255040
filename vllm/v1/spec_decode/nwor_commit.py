"""NWOR commit: which staged drafts to keep, and scattering their K/V from the staging buffer
into the paged cache (all layers in one launch). Rejected (and unused) staging rows never reach
the cache.

Two trios, each a Triton kernel, its public wrapper (kernel on CUDA, else the reference) and the
plain-torch reference the CPU engine runs:
  ``_commit_slots_kernel`` / ``acceptance_to_commit_slots`` / ``acceptance_to_commit_slots_ref``:
      SCV's accepted mask [R, W] -> one cache slot per draft (PADDING_SLOT_ID if rejected);
  ``_commit_staged_kv_kernel`` / ``commit_staged_kv`` / ``commit_staged_kv_ref``: the scatter.
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.platform import has_triton, kernel_enabled, kernel_for, nonempty
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.spec_decode.metadata import draft_spans

if has_triton():
    import triton
    import triton.language as tl

    # Triton kernels may only read globals that are constexpr.
    _PAD = tl.constexpr(PADDING_SLOT_ID)

    @triton.jit
    def _commit_slots_kernel(
        mask_ptr,          # [R, width] bool accepted mask (any strides)
        stride_m0, stride_m1,
        width,
        slot_ptr,          # [T] int64 KV slot of each draft token
        num_draft,         # T
        cu_ptr,            # [R] int cumulative end offsets
        out_ptr,           # [T] int64 out: slot if accepted else PADDING_SLOT_ID
        BLOCK: tl.constexpr,   # power of two >= width; positions past it are pre-filled by caller
    ):
        r = tl.program_id(0)
        end = tl.load(cu_ptr + r).to(tl.int64)
        start = tl.load(cu_ptr + r - 1, mask=r > 0, other=0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        in_req = (offs < end - start) & (start >= 0) & (start + offs < num_draft)
        acc = tl.load(mask_ptr + r * stride_m0 + offs * stride_m1, mask=in_req & (offs < width),
                      other=0) != 0
        slot = tl.load(slot_ptr + start + offs, mask=in_req, other=_PAD)
        tl.store(out_ptr + start + offs, tl.where(acc, slot, _PAD), mask=in_req)

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
    if not kernel_enabled(staging.device, force_triton):
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


def acceptance_to_commit_slots(accepted_mask: torch.Tensor, draft_slot_mapping: torch.Tensor,
                               cu_num_draft_tokens: torch.Tensor,
                               max_num_draft_tokens: Optional[int] = None,
                               force_triton: bool = False) -> torch.Tensor:
    """commit_slots [T] int64: the draft's KV slot if accepted, else PADDING_SLOT_ID ("do not write").

    accepted_mask [R, W]; draft_slot_mapping [T]; cu_num_draft_tokens [R]. Pass
    max_num_draft_tokens (host-known max k_r) to skip the pre-fill when it is <= W.
    """
    device = draft_slot_mapping.device
    if not kernel_enabled(device, force_triton):
        return acceptance_to_commit_slots_ref(accepted_mask, draft_slot_mapping,
                                              cu_num_draft_tokens)
    num_reqs, width = accepted_mask.shape
    num_draft = draft_slot_mapping.shape[0]
    block = triton.next_power_of_2(max(width, 1))
    if max_num_draft_tokens is None or max_num_draft_tokens > block:
        # Positions past the kernel's block are never accepted (>= W): pre-fill them.
        out = torch.full((num_draft,), PADDING_SLOT_ID, dtype=torch.int64, device=device)
    else:
        out = torch.empty(num_draft, dtype=torch.int64, device=device)
    if num_reqs == 0 or num_draft == 0:
        return out.fill_(PADDING_SLOT_ID)
    _commit_slots_kernel[(num_reqs,)](
        nonempty(accepted_mask), accepted_mask.stride(0), accepted_mask.stride(1), width,
        draft_slot_mapping, num_draft, cu_num_draft_tokens,
        out, BLOCK=block)
    return out


def acceptance_to_commit_slots_ref(accepted_mask: torch.Tensor,
                                   draft_slot_mapping: torch.Tensor,
                                   cu_num_draft_tokens: torch.Tensor) -> torch.Tensor:
    device = draft_slot_mapping.device
    num_reqs, width = accepted_mask.shape
    num_draft = draft_slot_mapping.shape[0]
    if num_reqs == 0 or width == 0 or num_draft == 0:
        return torch.full((num_draft,), PADDING_SLOT_ID, dtype=torch.int64, device=device)
    starts, ends = draft_spans(cu_num_draft_tokens.to(device))
    t = torch.arange(num_draft, device=device)
    req = torch.searchsorted(ends, t, right=True)                              # [T] request of t
    in_req = req < num_reqs
    req_c = req.clamp(max=num_reqs - 1)
    i = t - starts[req_c]                                                      # position in req
    acc = in_req & (i < width) & (i >= 0) & accepted_mask[req_c, i.clamp(0, width - 1)]
    return torch.where(acc, draft_slot_mapping.long(), torch.full_like(t, PADDING_SLOT_ID))
