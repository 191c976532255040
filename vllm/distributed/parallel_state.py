"""Tensor-parallel process group state and the collectives the model layers use.

With tp_size == 1 every collective is the identity and torch.distributed is never touched.
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

_TP_RANK = 0
_TP_SIZE = 1


def init_tensor_parallel(rank: int, world_size: int, init_method: str, backend: str) -> None:
    global _TP_RANK, _TP_SIZE
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=600))
    _TP_RANK, _TP_SIZE = rank, world_size


def destroy_tensor_parallel() -> None:
    global _TP_RANK, _TP_SIZE
    if dist.is_initialized():
        dist.destroy_process_group()
    _TP_RANK, _TP_SIZE = 0, 1


def get_tp_rank() -> int:
    return _TP_RANK


def get_tp_size() -> int:
    return _TP_SIZE


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    if _TP_SIZE == 1:
        return x
    dist.all_reduce(x)
    return x


def tp_all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """[..., n] on each rank -> [..., n * tp_size], rank-ordered."""
    if _TP_SIZE == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_TP_SIZE)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what}={n} is not divisible by tensor_parallel_size={d}")
    return n // d
