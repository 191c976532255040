"""Engine statistics. One EngineStats per engine, owned by it (``LLMEngine.stats``); whoever
holds a reference can read it after teardown (the profiling harness does), and
LLM.get_metrics() turns it into upstream-named metrics."""
from __future__ import annotations

import bisect
import itertools
import threading
from dataclasses import dataclass, field
from typing import Optional

from vllm.v1.spec_decode.metrics import SpecDecodingStats
from vllm.v1.spec_decode.nwor import NworStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
               120.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self):
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, v: float) -> None:
        self.n += 1
        self.total += v
        # First bucket with v <= bound (the last slot is +Inf); called per token, so in C.
        self.counts[bisect.bisect_left(self.buckets, v)] += 1


_ids = itertools.count()


@dataclass
class EngineStats:
    model_name: str = ""
    engine_id: int = field(default_factory=lambda: next(_ids))
    prompt_tokens: int = 0
    generation_tokens: int = 0
    request_success: dict[str, int] = field(default_factory=dict)   # finish_reason -> n
    num_preemptions: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_steps: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    # gauges, refreshed each step
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    num_kv_blocks: int = 0
    num_kv_blocks_free: int = 0
    # speculative decoding (None when not enabled)
    spec: Optional[SpecDecodingStats] = None
    nwor: Optional[NworStats] = None
    nwor_mode: str = "off"
    scv_mode: str = ""
    scv_mode_counts: dict[str, int] = field(default_factory=dict)
    scv_fallbacks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
