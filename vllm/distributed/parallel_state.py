"""Tensor-parallel process group state and the collectives the model layers use.

With tp_size == 1 every collective is the identity and torch.distributed is never touched.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from vllm.logger import init_logger

logger = init_logger(__name__)

_TP_RANK = 0
_TP_SIZE = 1
_BACKEND = ""


def init_tensor_parallel(rank: int, world_size: int, init_method: str, backend: str,
                         timeout_s: float = 600.0) -> None:
    """``init_method``: ``tcp://host:port`` (one machine) or ``env://`` (MASTER_ADDR and
    MASTER_PORT from the environment, as torchrun sets them)."""
    global _TP_RANK, _TP_SIZE, _BACKEND
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
    _TP_RANK, _TP_SIZE, _BACKEND = rank, world_size, backend


def abort_tensor_parallel() -> None:
    """Make collectives still in flight on this rank fail instead of waiting for a peer that
    is gone (NCCL kernels otherwise spin for ever). gloo needs nothing: its collectives fail
    as soon as a peer's sockets close."""
    if not dist.is_initialized() or _BACKEND != "nccl":
        return
    try:
        dist.distributed_c10d._abort_process_group()
    except Exception as e:  # noqa: BLE001 - best effort while failing anyway
        logger.warning("aborting the NCCL process group failed: %r", e)


def destroy_tensor_parallel(timeout_s: float = 5.0) -> None:
    """Tear the group down without ever blocking shutdown: on NCCL, aborting the communicator
    is local (a destroy can wait for peers that already left); either way the teardown runs
    in a helper thread and is abandoned after ``timeout_s``."""
    global _TP_RANK, _TP_SIZE, _BACKEND
    if dist.is_initialized():
        backend = _BACKEND

        def teardown():
            if backend == "nccl":
                try:
                    dist.distributed_c10d._abort_process_group()
                    return
                except Exception as e:  # noqa: BLE001 - no abort in this torch: destroy
                    logger.warning("NCCL abort unavailable (%r); destroying the group", e)
            dist.destroy_process_group()

        t = threading.Thread(target=teardown, name="vllm-tp-destroy", daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            logger.warning("process group teardown did not finish in %.0f s; abandoned", timeout_s)
            _forget_default_group()
    _TP_RANK, _TP_SIZE, _BACKEND = 0, 1, ""


def _forget_default_group() -> None:
    """Drop torch's record of a default group whose teardown hung (the helper thread keeps
    it alive), so that a later engine in this process can form a new group."""
    c10d = dist.distributed_c10d
    try:
        c10d._update_default_pg(None)
        for name in ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "pg_to_tag",
                     "tags_to_pg", "pg_coalesce_state"):
            getattr(c10d._world, name).clear()
    except Exception as e:  # noqa: BLE001 - private API moved: say so, carry on
        logger.warning("could not forget the stuck process group: %r", e)


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
