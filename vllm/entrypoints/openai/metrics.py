"""GET /metrics: the engine's stats in the Prometheus text format, upstream `vllm:` names.

A custom prometheus_client Collector turns ``to_metrics(stats)`` into metric families at scrape
time (nothing is mirrored into prometheus_client objects on the hot path). Counters are
exposed as ``<name>_total`` as prometheus_client does; the per-position acceptance vector as
``vllm:spec_decode_num_accepted_tokens_per_pos_total{position="i"}``.
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.registry import Collector

from vllm.v1.metrics.reader import Counter, Gauge, HistogramMetric, Vector, to_metrics
from vllm.v1.metrics.stats import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DOCS = {
    "vllm:prompt_tokens": "Number of prefill tokens processed.",
    "vllm:generation_tokens": "Number of generation tokens processed.",
    "vllm:num_preemptions": "Cumulative number of preemptions from the engine.",
    "vllm:prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "vllm:prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:num_kv_blocks_free": "Number of free KV-cache blocks.",
    "vllm:time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "vllm:inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "vllm:e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "vllm:request_success": "Count of finished requests, by finish reason.",
    "vllm:spec_decode_num_drafts": "Number of spec decoding drafts.",
    "vllm:spec_decode_num_draft_tokens": "Number of draft tokens.",
    "vllm:spec_decode_num_accepted_tokens": "Number of accepted tokens.",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "Accepted tokens per draft position.",
    "vllm:spec_decode_num_draft_tokens_stopped":
        "Draft tokens not drafted because of the confidence early exit.",
    "vllm:nwor_tokens_staged": "NWOR: draft tokens whose K/V was staged.",
    "vllm:nwor_tokens_committed": "NWOR: staged tokens committed to the KV cache.",
    "vllm:nwor_windows": "NWOR: staging windows.",
    "vllm:nwor_fallbacks": "NWOR: windows that fell back to writing every token.",
    "vllm:nwor_writes_saved_pct": "NWOR: percent of KV writes saved.",
    "vllm:scv_mask_steps": "SCV: verification mask steps, by mode.",
    "vllm:scv_fallbacks": "SCV: fallbacks to the host path.",
}


def _snapshot(stats: EngineStats) -> list:
    lock = getattr(stats, "lock", None)
    if lock is None:
        return to_metrics(stats)
    with lock:
        return to_metrics(stats)


class EngineStatsCollector(Collector):
    """Yields metric families for the EngineStats returned by ``stats_fn`` (the engines this
    collector reports on; the server passes its own engine's)."""

    def __init__(self, stats_fn: Callable[[], Iterable[EngineStats]]):
        self.stats_fn = stats_fn

    def collect(self):
        families: dict[str, object] = {}
        order: list[str] = []

        def family(name: str, kind, labels: list[str]):
            key = f"{kind.__name__}:{name}"
            f = families.get(key)
            if f is None:
                f = kind(name, _DOCS.get(name, name), labels=labels)
                families[key] = f
                order.append(key)
            return f

        for stats in self.stats_fn():
            for m in _snapshot(stats):
                keys = list(m.labels)
                vals = [str(m.labels[k]) for k in keys]
                if isinstance(m, Counter):
                    family(m.name, CounterMetricFamily, keys).add_metric(vals, m.value)
                elif isinstance(m, Gauge):
                    family(m.name, GaugeMetricFamily, keys).add_metric(vals, m.value)
                elif isinstance(m, Vector):
                    f = family(m.name, CounterMetricFamily, keys + ["position"])
                    for i, v in enumerate(m.values):
                        f.add_metric(vals + [str(i)], v)
                elif isinstance(m, HistogramMetric):
                    f = family(m.name, HistogramMetricFamily, keys)
                    f.add_metric(vals, buckets=list(m.buckets.items()), sum_value=m.sum)
        for key in order:
            yield families[key]


def make_registry(stats_fn: Callable[[], Iterable[EngineStats]]) -> CollectorRegistry:
    """A private registry (two servers in one process never clash on names)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineStatsCollector(stats_fn))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
