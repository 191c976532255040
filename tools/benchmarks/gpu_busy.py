"""GPU busy fraction of a stretch of engine steps: the union of the device's kernel and copy
intervals (CUPTI, via torch.profiler) over the span from the first to the last of them. Also
kernels per step and GPU time per step. A host-bound engine leaves gaps between kernels; an
engine whose host work overlaps the GPU's does not."""
from __future__ import annotations

import time
from typing import Callable

import torch


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def measure(step: Callable[[], object], n_steps: int) -> dict:
    """Runs ``step`` n_steps times under the profiler (CUDA activity only)."""
    if not torch.cuda.is_available():
        return {}
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n_steps):
            step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ivs, kernels = [], 0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ivs.append((e.time_range.start, e.time_range.end))
        kernels += not e.name.startswith(("Memcpy", "Memset"))
    if not ivs:
        return {}
    busy = _union_us(ivs)
    span = max(e for _, e in ivs) - min(s for s, _ in ivs)
    return {"steps": n_steps, "kernels_per_step": kernels / n_steps,
            "gpu_busy_ms_per_step": busy / 1e3 / n_steps,
            "wall_ms_per_step_profiled": wall * 1e3 / n_steps,
            "gpu_busy_fraction": busy / span if span else None}
