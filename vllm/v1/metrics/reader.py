"""EngineStats -> upstream-style metric objects (LLM.get_metrics())."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from vllm.v1.metrics.stats import EngineStats, Histogram


@dataclass
class Metric:
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Counter(Metric):
    value: int = 0


@dataclass
class Gauge(Metric):
    value: float = 0.0


@dataclass
class Vector(Metric):
    values: list[int] = field(default_factory=list)


@dataclass
class HistogramMetric(Metric):
    count: int = 0
    sum: float = 0.0
    buckets: dict[str, int] = field(default_factory=dict)


def _hist(name, h: Histogram, labels) -> HistogramMetric:
    b, acc = {}, 0
    for le, c in zip(list(h.buckets) + ["+Inf"], h.counts):
        acc += c
        b[str(le)] = acc
    return HistogramMetric(name, labels, count=h.n, sum=h.total, buckets=b)


def to_metrics(s: EngineStats) -> list[Union[Counter, Gauge, Vector, HistogramMetric]]:
    L = {"model_name": s.model_name, "engine": str(s.engine_id)}
    out: list = [
        Counter("vllm:prompt_tokens", L, s.prompt_tokens),
        Counter("vllm:generation_tokens", L, s.generation_tokens),
        Counter("vllm:num_preemptions", L, s.num_preemptions),
        Counter("vllm:prefix_cache_queries", L, s.prefix_cache_queries),
        Counter("vllm:prefix_cache_hits", L, s.prefix_cache_hits),
        Gauge("vllm:num_requests_running", L, s.num_running),
        Gauge("vllm:num_requests_waiting", L, s.num_waiting),
        Gauge("vllm:kv_cache_usage_perc", L, s.kv_usage),
        Gauge("vllm:num_kv_blocks_free", L, s.num_kv_blocks_free),
        _hist("vllm:time_to_first_token_seconds", s.ttft, L),
        _hist("vllm:inter_token_latency_seconds", s.itl, L),
        _hist("vllm:e2e_request_latency_seconds", s.e2e, L),
    ]
    for reason, n in sorted(s.request_success.items()):
        out.append(Counter("vllm:request_success", {**L, "finished_reason": reason}, n))
    if s.spec is not None:
        sp = s.spec
        out += [Counter("vllm:spec_decode_num_drafts", L, sp.num_drafts),
                Counter("vllm:spec_decode_num_draft_tokens", L, sp.num_draft_tokens),
                Counter("vllm:spec_decode_num_accepted_tokens", L, sp.num_accepted_tokens),
                Counter("vllm:spec_decode_num_draft_tokens_stopped", L,
                        sp.num_draft_tokens_stopped),
                Vector("vllm:spec_decode_num_accepted_tokens_per_pos", L,
                       list(sp.accepted_per_pos))]
    if s.nwor is not None:
        nw = s.nwor
        NL = {**L, "mode": s.nwor_mode}
        out += [Counter("vllm:nwor_tokens_staged", NL, nw.tokens_staged),
                Counter("vllm:nwor_tokens_committed", NL, nw.tokens_committed),
                Counter("vllm:nwor_windows", NL, nw.windows),
                Counter("vllm:nwor_fallbacks", NL, nw.fallbacks),
                Gauge("vllm:nwor_writes_saved_pct", NL, nw.writes_saved_pct)]
    for mode, n in sorted(s.scv_mode_counts.items()):
        out.append(Counter("vllm:scv_mask_steps", {**L, "mode": mode}, n))
    if s.spec is not None:
        out.append(Counter("vllm:scv_fallbacks", L, s.scv_fallbacks))
    return out


def metrics_dict(s: EngineStats) -> dict[str, float]:
    """Flat {name: value} view (labels dropped except per-position / mode suffixes)."""
    d: dict[str, float] = {}
    for m in to_metrics(s):
        key = m.name
        if "finished_reason" in m.labels:
            key += f"{{finished_reason={m.labels['finished_reason']}}}"
        elif m.name == "vllm:scv_mask_steps":
            key += f"{{mode={m.labels['mode']}}}"
        if isinstance(m, (Counter, Gauge)):
            d[key] = m.value
        elif isinstance(m, Vector):
            for i, v in enumerate(m.values):
                d[f"{key}{{position={i}}}"] = v
        else:
            d[key + "_count"] = m.count
            d[key + "_sum"] = m.sum
    return d
