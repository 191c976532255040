"""RMSNorm with an optional fused residual add, in one kernel.

Trio: ``_rms_norm_kernel`` (Triton), ``rms_norm`` (public: kernel on CUDA, else the reference),
``rms_norm_ref`` (plain torch, what the CPU engine runs; the exact formula ``RMSNorm`` had).

Semantics (both paths, same rounding order):
  with a residual: ``x = x + residual`` rounded to the input dtype, and that sum is the new residual;
  ``out = (x_f32 * rsqrt(mean(x_f32 ** 2) + eps)).to(x.dtype) * weight`` (the last product in the
  promoted dtype of x and weight, i.e. rounded once, like torch's elementwise multiply).
Outputs are new contiguous tensors; the inputs are never written.
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.platform import has_triton, kernel_enabled, kernel_for

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, new_res_ptr,
        stride_xt, stride_xh, stride_rt, stride_rh, stride_w, stride_ot, stride_nt,
        eps, H, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # One program per row: the whole [H] row lives in registers (BLOCK = next_pow2(H)).
        t = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        ok = offs < H
        x = tl.load(x_ptr + t * stride_xt + offs * stride_xh, mask=ok, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + t * stride_rt + offs * stride_rh, mask=ok, other=0.0)
            # The sum is rounded to the input dtype (as torch's x + residual), then reused.
            x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
            tl.store(new_res_ptr + t * stride_nt + offs, x, mask=ok)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, axis=0) / H
        rstd = 1.0 / tl.sqrt(var + eps)
        y = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + offs * stride_w, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + t * stride_ot + offs, (y * w).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None, force_triton: bool = False):
    """x [..., H] (any strides), weight [H] -> out, or (out, x + residual) when residual is given.

    One launch, grid (rows,), no host sync: CUDA-graph capturable. ``force_triton`` launches the
    kernel on CPU tensors through the Triton interpreter (tests)."""
    if not kernel_enabled(x.device, force_triton):
        return rms_norm_ref(x, weight, eps, residual)
    if residual is not None and residual.dtype != x.dtype:
        # The kernel stores the sum in x's dtype; mixed dtypes (never in the engine) use torch.
        return rms_norm_ref(x, weight, eps, residual)
    H = x.shape[-1]
    shape = x.shape
    x2 = x.reshape(-1, H)
    T = x2.shape[0]
    out = torch.empty(shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if residual is not None:
        assert residual.shape == shape, (residual.shape, shape)
        r2 = residual.reshape(-1, H)
        new_res = torch.empty(shape, dtype=x.dtype, device=x.device)
    else:
        r2, new_res = x2, out  # dummies, never touched
    if T == 0:
        return out if residual is None else (out, new_res)
    BLOCK = triton.next_power_of_2(H)
    kernel = kernel_for(_rms_norm_kernel, x.device)
    kernel[(T,)](
        x2, r2, weight, out, new_res,
        x2.stride(0), x2.stride(1), r2.stride(0), r2.stride(1), weight.stride(0),
        H, H, float(eps), H,
        HAS_RESIDUAL=residual is not None, BLOCK=BLOCK,
        num_warps=min(max(BLOCK // 256, 1), 8),
    )
    return out if residual is None else (out, new_res)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None):
    """Plain-torch rms_norm: exactly the formula RMSNorm.forward always used."""
    if residual is not None:
        x = x + residual
        residual = x
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = out.to(x.dtype) * weight
    return out if residual is None else (out, residual)
