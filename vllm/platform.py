"""What this process can use: CUDA, Triton. One place decides whether kernels or torch references run."""
from __future__ import annotations

import functools

import torch

from vllm import envs


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def use_triton(device: torch.device | str) -> bool:
    """Triton kernels run only on CUDA tensors, when Triton imports and nobody disabled it."""
    dev = torch.device(device)
    return dev.type == "cuda" and has_triton() and not envs.get("VLLM_TRITON_DISABLE")


def kernel_enabled(device: torch.device | str, force_triton: bool = False) -> bool:
    """Whether a kernel wrapper launches its Triton kernel (else it runs the torch reference).
    ``force_triton`` (tests) launches it even on CPU tensors, through the Triton interpreter."""
    if force_triton:
        if not has_triton():
            raise RuntimeError("force_triton=True but triton is not importable")
        return True
    return use_triton(device)


def kernel_for(kernel, device: torch.device | str):
    """The Triton kernel to launch on ``device``. On the CPU (tests only) that needs the Triton
    interpreter, which works only if TRITON_INTERPRET=1 was set before triton was imported."""
    if torch.device(device).type == "cuda":
        return kernel
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before "
                           "triton is imported")
    return kernel


def nonempty(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a one-element stand-in when it is empty: Triton wants a real pointer and an
    empty CUDA tensor may have data_ptr 0. Kernels mask every load of it (never read)."""
    return t if t.numel() > 0 else torch.zeros(1, dtype=t.dtype, device=t.device)


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``. On CUDA through pinned memory with non_blocking, so
    the copy is queued on the stream instead of blocking the host until the GPU is idle (a
    plain ``torch.tensor(..., device="cuda")`` or ``.to("cuda")`` would)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class nvtx_range:
    """NVTX range on CUDA (visible to Nsight and torch.profiler); a no-op on the CPU."""

    def __init__(self, name: str):
        self.name = name
        self.active = torch.cuda.is_available()

    def __enter__(self):
        if self.active:
            torch.cuda.nvtx.range_push(self.name)
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.cuda.nvtx.range_pop()
        return False
