"""Summing data-parallel replicas' stats (what /metrics shows as engine="all")."""
from __future__ import annotations

import pickle

from vllm.v1.engine import dp_stats
from vllm.v1.metrics.reader import to_metrics
from vllm.v1.metrics.stats import EngineStats
from vllm.v1.spec_decode.metrics import SpecDecodingStats


def _replica(i: int, tokens: int, ttfts: list[float], accepted: list[int]) -> EngineStats:
    s = EngineStats(model_name="m")
    s.generation_tokens = tokens
    s.request_success = {"length": i + 1}
    s.kv_usage = 0.2 * (i + 1)
    s.num_running = 3 + i
    for t in ttfts:
        s.ttft.observe(t)
    s.spec = SpecDecodingStats(num_spec_tokens=len(accepted))
    s.spec.accepted_per_pos = list(accepted)
    s.spec.num_drafts = 10 * (i + 1)
    s.spec.num_draft_tokens_stopped = 4 + i
    # As it travels from a replica: pickled without its lock, adopted with the replica index.
    return dp_stats.adopt(pickle.loads(pickle.dumps(dp_stats.snapshot(s))), i)


def test_sum_of_two_replicas():
    a = _replica(0, 100, [0.003, 0.2], [5, 2])
    b = _replica(1, 50, [0.5], [1, 1, 1])
    total = EngineStats(model_name="m")
    total.engine_id = "all"
    dp_stats.sum_into(total, [a, b])
    assert total.generation_tokens == 150
    assert total.request_success == {"length": 3}
    assert total.num_running == 7
    assert abs(total.kv_usage - 0.3) < 1e-9            # a fraction: the mean
    assert total.ttft.n == 3 and abs(total.ttft.total - 0.703) < 1e-9
    assert total.ttft.counts == [x + y for x, y in zip(a.ttft.counts, b.ttft.counts)]
    assert total.spec.accepted_per_pos == [6, 3, 1] and total.spec.num_drafts == 30
    assert total.spec.num_draft_tokens_stopped == 9
    assert {m.value for m in to_metrics(total)
            if m.name == "vllm:spec_decode_num_draft_tokens_stopped"} == {9}
    assert a.generation_tokens == 100 and a.spec.accepted_per_pos == [5, 2]   # parts intact
    labels = {m.labels["engine"] for s in (total, a, b) for m in to_metrics(s)}
    assert labels == {"all", "0", "1"}
    dp_stats.sum_into(total, [a, b])                   # idempotent: recomputed, not added
    assert total.generation_tokens == 150
