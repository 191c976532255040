"""Rotary position embedding (rotate-half / NeoX layout) for q and k in one kernel.

Trio: ``_rotary_kernel`` (Triton), ``rotary_embedding`` (public: kernel on CUDA, else the
reference), ``rotary_embedding_ref`` (plain torch, what the CPU engine runs; the exact formula
``RotaryEmbedding`` had).

``cos_sin [max_pos, rotary_dim]``: row p holds cos(p * inv_freq) in the first half and
sin(p * inv_freq) in the second. With half = rotary_dim // 2 and x1 = x[..., :half],
x2 = x[..., half:rotary_dim] (in fp32): out = [x1 cos - x2 sin, x2 cos + x1 sin], cast back to the
input dtype; dims past rotary_dim are kept as they are.

In-place behaviour: the kernel path (CUDA) rotates q and k IN PLACE (they are typically views of
the fused qkv projection output, so no copy is made) and returns those same tensors; the reference
path returns new tensors and leaves q and k untouched. Callers must use the returned tensors and
must not rely on q / k keeping their pre-rotation values.
"""
from __future__ import annotations

import torch

from vllm.platform import has_triton, kernel_enabled, kernel_for
from vllm.v1.attention.rotary_ref import rotary_embedding_ref

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _rotate_heads(x_ptr, t, stride_xt, stride_xh, stride_xd, cos, sin, offs_h, offs_j, ok,
                      HALF: tl.constexpr):
        # x[t, h, j] and x[t, h, j + HALF] for the [BLOCK_H, BLOCK_HALF] tile, rotated in place.
        p1 = x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_j[None, :] * stride_xd
        p2 = p1 + HALF * stride_xd
        x1 = tl.load(p1, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(p2, mask=ok, other=0.0).to(tl.float32)
        o1 = x1 * cos - x2 * sin
        o2 = x2 * cos + x1 * sin
        tl.store(p1, o1.to(x_ptr.dtype.element_ty), mask=ok)
        tl.store(p2, o2.to(x_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _rotary_kernel(
        pos_ptr, q_ptr, k_ptr, cs_ptr,
        stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd, stride_cs,
        NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr,
        BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
    ):
        # One program per token: cos/sin loaded once, then all q heads and all k heads.
        t = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + t).to(tl.int64)
        offs_j = tl.arange(0, BLOCK_HALF)
        j_ok = offs_j < HALF
        cs_row = cs_ptr + pos * stride_cs
        cos = tl.load(cs_row + offs_j, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        sin = tl.load(cs_row + HALF + offs_j, mask=j_ok, other=0.0).to(tl.float32)[None, :]

        offs_hq = tl.arange(0, BLOCK_HQ)
        _rotate_heads(q_ptr, t, stride_qt, stride_qh, stride_qd, cos, sin, offs_hq, offs_j,
                      (offs_hq[:, None] < NUM_Q_HEADS) & j_ok[None, :], HALF)
        offs_hk = tl.arange(0, BLOCK_HKV)
        _rotate_heads(k_ptr, t, stride_kt, stride_kh, stride_kd, cos, sin, offs_hk, offs_j,
                      (offs_hk[:, None] < NUM_KV_HEADS) & j_ok[None, :], HALF)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin: torch.Tensor, rotary_dim: int, force_triton: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] (int), q [T, Hq, D], k [T, Hkv, D] (any strides, e.g. views of qkv),
    cos_sin [max_pos, rotary_dim] -> (q_rot, k_rot).

    Kernel path: q and k are rotated IN PLACE and returned (see the module docstring).
    One launch, grid (T,), no host sync: CUDA-graph capturable. ``force_triton`` launches the
    kernel on CPU tensors through the Triton interpreter (tests)."""
    if not kernel_enabled(q.device, force_triton):
        return rotary_embedding_ref(positions, q, k, cos_sin, rotary_dim)
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    assert k.shape[0] == T and k.shape[2] == D and rotary_dim % 2 == 0 and rotary_dim <= D
    assert cos_sin.stride(-1) == 1 and cos_sin.shape[-1] == rotary_dim
    if T == 0:
        return q, k
    half = rotary_dim // 2
    BLOCK_HQ, BLOCK_HKV = triton.next_power_of_2(Hq), triton.next_power_of_2(Hkv)
    BLOCK_HALF = triton.next_power_of_2(half)
    kernel = kernel_for(_rotary_kernel, q.device)
    kernel[(T,)](
        positions, q, k, cos_sin,
        *q.stride(), *k.stride(), cos_sin.stride(0),
        NUM_Q_HEADS=Hq, NUM_KV_HEADS=Hkv, HALF=half,
        BLOCK_HQ=BLOCK_HQ, BLOCK_HKV=BLOCK_HKV, BLOCK_HALF=BLOCK_HALF,
        num_warps=4 if BLOCK_HQ * BLOCK_HALF >= 2048 else (2 if BLOCK_HQ * BLOCK_HALF >= 512
                                                           else 1),
    )
    return q, k
