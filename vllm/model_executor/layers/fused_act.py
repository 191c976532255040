"""SiLU-and-multiply (the gated MLP activation) in one kernel.

Trio: ``_silu_and_mul_kernel`` (Triton), ``silu_and_mul`` (public: kernel on CUDA, else the
reference), ``silu_and_mul_ref`` (plain torch, what the CPU engine runs; the exact formula
``LlamaMLP`` had: ``F.silu(gate) * up``).

x [T, 2I] = [gate | up] -> out [T, I] = silu(gate) * up. The kernel does the math in fp32 with the
same rounding points as the torch formula (silu(gate) rounded to x.dtype, then the product rounded
to x.dtype), so on bf16/fp16 it agrees with torch / Hugging Face to the last bit up to exp().
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm.platform import has_triton, kernel_enabled, kernel_for

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _silu_and_mul_kernel(x_ptr, out_ptr, stride_xt, stride_xi, stride_ot, I,
                             BLOCK: tl.constexpr):
        # Grid (T, cdiv(I, BLOCK)): one BLOCK-wide chunk of one row per program.
        t = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < I
        row = x_ptr + t * stride_xt
        g = tl.load(row + offs * stride_xi, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(row + (offs + I) * stride_xi, mask=ok, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + t * stride_ot + offs, (s * u).to(out_ptr.dtype.element_ty), mask=ok)


def silu_and_mul(x: torch.Tensor, force_triton: bool = False) -> torch.Tensor:
    """x [..., 2I] (any strides) -> new contiguous [..., I] = silu(x[..., :I]) * x[..., I:].

    One launch, grid (rows, cdiv(I, BLOCK)), no host sync: CUDA-graph capturable.
    ``force_triton`` launches the kernel on CPU tensors through the Triton interpreter (tests)."""
    if not kernel_enabled(x.device, force_triton):
        return silu_and_mul_ref(x)
    two_i = x.shape[-1]
    assert two_i % 2 == 0, x.shape
    I = two_i // 2
    x2 = x.reshape(-1, two_i)
    T = x2.shape[0]
    out = torch.empty((*x.shape[:-1], I), dtype=x.dtype, device=x.device)
    if T == 0 or I == 0:
        return out
    BLOCK = min(1024, triton.next_power_of_2(I))
    kernel = kernel_for(_silu_and_mul_kernel, x.device)
    kernel[(T, triton.cdiv(I, BLOCK))](
        x2, out, x2.stride(0), x2.stride(1), I, I, BLOCK=BLOCK,
        num_warps=4 if BLOCK >= 1024 else (2 if BLOCK >= 256 else 1),
    )
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Plain-torch silu_and_mul: exactly the formula LlamaMLP always used."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
