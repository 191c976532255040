"""Statistics of data-parallel replicas: a replica's EngineStats travels to the server as a
snapshot; the server exposes each (label ``engine="<replica>"``) and their sum
(``engine="all"``)."""
from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any

from vllm.v1.metrics.stats import EngineStats

_SKIP = {"lock", "engine_id", "model_name", "nwor_mode", "scv_mode"}
_MEAN = {"kv_usage"}     # a fraction per replica: the sum's value is the mean


def snapshot(stats: EngineStats) -> EngineStats:
    """A lock-free copy to pickle (taken on the replica's only thread, between steps)."""
    return dataclasses.replace(stats, lock=None)


def adopt(snap: EngineStats, replica: int) -> EngineStats:
    """A received snapshot, ready for the Prometheus collector."""
    snap.lock = threading.Lock()
    snap.engine_id = replica
    return snap


def _add(a: Any, b: Any) -> Any:
    if b is None:
        return a
    if a is None:
        return copy.deepcopy(b)
    if isinstance(a, bool) or isinstance(a, (str, tuple)):
        return a
    if isinstance(a, (int, float)):
        return a + b
    if isinstance(a, list):
        n = max(len(a), len(b))
        return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]
    if isinstance(a, dict):
        return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}
    if dataclasses.is_dataclass(a):
        out = copy.deepcopy(a)
        for f in dataclasses.fields(a):
            if f.init:
                setattr(out, f.name, _add(getattr(a, f.name), getattr(b, f.name)))
        return out
    return a


def sum_into(total: EngineStats, parts: list[EngineStats]) -> None:
    """Overwrite ``total``'s counters, histograms and gauges with the sum over ``parts``."""
    if not parts:
        return
    for f in dataclasses.fields(EngineStats):
        if f.name in _SKIP:
            continue
        acc = None
        for p in parts:
            acc = _add(acc, getattr(p, f.name))
        if f.name in _MEAN:
            acc = acc / len(parts)
        setattr(total, f.name, acc)
    total.nwor_mode, total.scv_mode = parts[0].nwor_mode, parts[0].scv_mode
