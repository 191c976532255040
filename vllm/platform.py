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
