"""Rotary embedding of q and k plus the KV-cache (and NWOR staging) write, in one kernel.

Trio: ``_rope_kv_write_kernel`` (Triton), ``rope_write_kv`` (public: kernel on CUDA, else the
reference), ``rope_write_kv_ref`` (plain torch: ``rotary_embedding_ref`` then ``write_kv_ref``,
exactly the two steps it replaces).

Why: a decode step launched the rotary kernel and then the KV-write kernel back to back in every
layer; both read k. Fused, each layer saves one launch and one read of k.

Semantics (both paths):
  rotary (rotate-half / NeoX layout) as ``fused_rotary``: with half = rotary_dim // 2,
  out = [x1 cos - x2 sin, x2 cos + x1 sin] in fp32, cast back to the input dtype; dims past
  rotary_dim are kept. Then the ROTATED k and v of token t go to cache slot
  ``slot_mapping[t]`` (-1 = do not write) and, when staging is given, to staging row
  ``stage_index[t]`` (-1 = not staged): the exact NWOR stage-mode contract of ``kv_write``.
  Rows with both -1 (padding) are still rotated in q / k (harmless: nobody reads them).

In-place behaviour: the kernel rotates q and k IN PLACE (they are views of the fused qkv output;
the attention kernel then reads this step's k from there) and returns them; the reference returns
new tensors. Callers must use the returned tensors.
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.platform import has_triton, kernel_for, use_triton
from vllm.v1.attention.rotary_ref import rotary_embedding_ref
from vllm.v1.attention.kv_write import write_kv_ref

if has_triton():
    import triton
    import triton.language as tl

    from vllm.v1.attention.kv_write import _kv_targets, _store_kv_tile

    @triton.jit
    def _rope_tile(x, xp, cos, sin, offs_d, HALF: tl.constexpr, ROT: tl.constexpr):
        # x [H, D] and its rotate-half partner xp (x[h, d + HALF] for d < HALF, x[h, d - HALF]
        # for HALF <= d < ROT), fp32; cos / sin [1, D] indexed by d % HALF.
        first = (offs_d < HALF)[None, :]
        rot = x * cos + tl.where(first, -(xp * sin), xp * sin)
        return tl.where((offs_d < ROT)[None, :], rot, x)

    @triton.jit
    def _rope_kv_write_kernel(
        pos_ptr, q_ptr, k_ptr, v_ptr, cs_ptr, cache_ptr, slot_ptr, staging_ptr, stage_idx_ptr,
        stride_qt, stride_qh, stride_qd,
        stride_kt, stride_kh, stride_kd,
        stride_vt, stride_vh, stride_vd,
        stride_cs,
        stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
        stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
        NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
        HALF: tl.constexpr, ROT: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_D: tl.constexpr,
        HAS_STAGING: tl.constexpr,
    ):
        # One program per token: cos/sin once, q heads rotated in place, k heads rotated in
        # place and (with v) written to the cache slot and / or the staging row.
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        # Every lane d holds its own element and its partner: no lane reads what another wrote.
        partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
        partner = tl.where(offs_d < ROT, partner, offs_d)
        j = tl.where(offs_d < HALF, offs_d, offs_d - HALF)
        cs_ok = offs_d < ROT
        cos = tl.load(cs_ptr + pos * stride_cs + j, mask=cs_ok, other=1.0).to(tl.float32)[None, :]
        sin = tl.load(cs_ptr + pos * stride_cs + HALF + j, mask=cs_ok,
                      other=0.0).to(tl.float32)[None, :]

        # ---- q ----
        offs_hq = tl.arange(0, BLOCK_HQ)
        q_ok = (offs_hq[:, None] < NUM_Q_HEADS) & d_ok[None, :]
        q_row = q_ptr + t * stride_qt + offs_hq[:, None] * stride_qh
        xq = tl.load(q_row + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
        xqp = tl.load(q_row + partner[None, :] * stride_qd, mask=q_ok, other=0.0)
        oq = _rope_tile(xq.to(tl.float32), xqp.to(tl.float32), cos, sin, offs_d, HALF, ROT)
        tl.store(q_row + offs_d[None, :] * stride_qd, oq.to(q_ptr.dtype.element_ty), mask=q_ok)

        # ---- k (rotated in place), v ----
        offs_h = tl.arange(0, BLOCK_HKV)
        hd_ok = (offs_h[:, None] < NUM_KV_HEADS) & d_ok[None, :]
        k_row = k_ptr + t * stride_kt + offs_h[:, None] * stride_kh
        xk = tl.load(k_row + offs_d[None, :] * stride_kd, mask=hd_ok, other=0.0)
        xkp = tl.load(k_row + partner[None, :] * stride_kd, mask=hd_ok, other=0.0)
        k = _rope_tile(xk.to(tl.float32), xkp.to(tl.float32), cos, sin, offs_d, HALF,
                       ROT).to(k_ptr.dtype.element_ty)
        tl.store(k_row + offs_d[None, :] * stride_kd, k, mask=hd_ok)

        slot, write_cache, row, write_stage = _kv_targets(t, slot_ptr, stage_idx_ptr,
                                                          HAS_STAGING)
        ld_ok = hd_ok & (write_cache | write_stage)
        v = tl.load(v_ptr + t * stride_vt + offs_h[:, None] * stride_vh
                    + offs_d[None, :] * stride_vd, mask=ld_ok, other=0.0)
        _store_kv_tile(k, v, slot, write_cache, row, write_stage, hd_ok, offs_h, offs_d,
                       cache_ptr, staging_ptr,
                       stride_c_kv, stride_c_blk, stride_c_off, stride_c_h, stride_c_d,
                       stride_s_row, stride_s_kv, stride_s_h, stride_s_d,
                       BLOCK_SIZE, HAS_STAGING)


# Launch constants per (Hq, Hkv, D, rotary_dim, page, staged): computed once, not every call
# (the eager path launches this 30+ times a step).
_LAUNCH_CACHE: dict[tuple, dict] = {}


def _launch_consts(hq: int, hkv: int, d: int, rotary_dim: int, page: int, staged: bool) -> dict:
    key = (hq, hkv, d, rotary_dim, page, staged)
    c = _LAUNCH_CACHE.get(key)
    if c is None:
        bd = triton.next_power_of_2(d)
        bhq = triton.next_power_of_2(hq)
        c = dict(NUM_Q_HEADS=hq, NUM_KV_HEADS=hkv, HEAD_DIM=d, HALF=rotary_dim // 2,
                 ROT=rotary_dim, BLOCK_SIZE=page, BLOCK_HQ=bhq,
                 BLOCK_HKV=triton.next_power_of_2(hkv), BLOCK_D=bd, HAS_STAGING=staged,
                 num_warps=4 if bhq * bd >= 2048 else (2 if bhq * bd >= 512 else 1))
        _LAUNCH_CACHE[key] = c
    return c


def rope_write_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  cos_sin: torch.Tensor, rotary_dim: int, kv_cache_layer: torch.Tensor,
                  slot_mapping: torch.Tensor, staging: Optional[torch.Tensor] = None,
                  stage_index: Optional[torch.Tensor] = None, force_triton: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] int, q [T, Hq, D], k / v [T, Hkv, D] (any strides, e.g. views of qkv),
    cos_sin [max_pos, rotary_dim] fp32, kv_cache_layer [2, NB, BS, Hkv, D], slot_mapping [T]
    (-1 = skip), staging [S, 2, Hkv, D] with stage_index [T] (-1 = not staged) or None
    -> (q_rot, k_rot).

    One launch, grid (T,), no host sync: CUDA-graph capturable. ``force_triton`` launches the
    kernel on CPU tensors through the Triton interpreter (tests)."""
    if not (force_triton or use_triton(q.device)):
        return rope_write_kv_ref(positions, q, k, v, cos_sin, rotary_dim, kv_cache_layer,
                                 slot_mapping, staging, stage_index)
    check_args(q, k, v, cos_sin, rotary_dim, staging, stage_index)
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    if T == 0:
        return q, k
    has_staging = staging is not None
    if has_staging:
        st, st_idx, st_strides = staging, stage_index, staging.stride()
    else:
        st, st_idx, st_strides = kv_cache_layer, slot_mapping, (0, 0, 0, 0)  # never touched
    kernel = kernel_for(_rope_kv_write_kernel, q.device)
    kernel[(T,)](
        positions, q, k, v, cos_sin, kv_cache_layer, slot_mapping, st, st_idx,
        *q.stride(), *k.stride(), *v.stride(), cos_sin.stride(0),
        *kv_cache_layer.stride(), *st_strides,
        **_launch_consts(Hq, Hkv, D, rotary_dim, kv_cache_layer.shape[2], has_staging),
    )
    return q, k


def check_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_sin: torch.Tensor,
               rotary_dim: int, staging: Optional[torch.Tensor],
               stage_index: Optional[torch.Tensor]) -> None:
    """Shape checks of the kernel path (a few host comparisons, no device work)."""
    T, _, D = q.shape
    if k.shape != v.shape or k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"rope_write_kv: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} do not match")
    if rotary_dim % 2 or rotary_dim > D or cos_sin.shape[-1] != rotary_dim \
            or cos_sin.stride(-1) != 1:
        raise ValueError(f"rope_write_kv: rotary_dim={rotary_dim} with head_dim {D} and "
                         f"cos_sin {tuple(cos_sin.shape)}")
    if (staging is None) != (stage_index is None):
        raise ValueError("rope_write_kv: staging and stage_index go together")


def rope_write_kv_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                      v: torch.Tensor, cos_sin: torch.Tensor, rotary_dim: int,
                      kv_cache_layer: torch.Tensor, slot_mapping: torch.Tensor,
                      staging: Optional[torch.Tensor] = None,
                      stage_index: Optional[torch.Tensor] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch: rotary_embedding_ref, then write_kv_ref of the rotated k and v."""
    q_rot, k_rot = rotary_embedding_ref(positions, q, k, cos_sin, rotary_dim)
    write_kv_ref(k_rot, v, kv_cache_layer, slot_mapping, staging, stage_index)
    return q_rot, k_rot
