"""The byte model of KV-cache writes (docs/profiling.md, ARCHITECTURE.md "The byte model").

Per verify step of a request with k drafts of which a are accepted:
  off    writes (1 + k) tokens' K/V into the paged cache;
  stage  writes (1 + a) into the cache and k into the staging buffer.
KV bytes per token = layers x 2 (K and V) x kv_heads x head_dim x dtype bytes.

Everything is derived from the engine's counters (LLM.get_metrics_dict()), so the model
describes exactly the run that produced them:
  P  prompt tokens computed     vllm:prompt_tokens - vllm:prefix_cache_hits (hits are not
                                recomputed, so not rewritten)
  G  generated tokens           vllm:generation_tokens
  N  finished requests          sum of vllm:request_success{...}
  D  verify windows             vllm:spec_decode_num_drafts
  T  draft tokens               vllm:spec_decode_num_draft_tokens
  A  accepted drafts            vllm:spec_decode_num_accepted_tokens
  S  staged / C committed       vllm:nwor_tokens_staged / vllm:nwor_tokens_committed (0 in off)
Decode steps without drafts (e.g. n-gram found no match) write one token each; their count is
  Sn = G - N - D - A
(each request's first token comes from its prefill, each window emits a + 1 tokens, every
other decode step emits one). Tokens every mode writes straight into the cache:
  base = P + D + Sn          (prompts, the committed token of each window, plain decode steps)
  cache_if_off = base + T    (every draft written, accepted or not)
  cache        = base + C + (T - S)   (drafts of NWOR fallback windows go straight to the cache)
  staging      = S
  floor        = base + A    (each kept token written exactly once)
Only the target model's KV is modelled (a draft model's / EAGLE head's own KV is not), and a
window truncated by max_tokens makes Sn a slight undercount.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


def dtype_bytes(dtype: Any) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    return torch.empty((), dtype=dtype).element_size()


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: Any) -> int:
    return num_layers * 2 * num_kv_heads * head_dim * dtype_bytes(dtype)


def kv_bytes_per_token_of(model_config) -> int:
    """kv_bytes_per_token of an engine's ModelConfig (all KV heads: one TP rank holds 1/tp)."""
    mc = model_config
    return kv_bytes_per_token(mc.num_layers, mc.num_kv_heads, mc.head_dim, mc.dtype)


def geometry_from_config(model_config, tensor_parallel_size: int = 1) -> dict[str, Any]:
    """Model geometry from `llm.llm_engine.config.model_config`."""
    mc = model_config
    kv_heads = mc.num_kv_heads
    return {"num_layers": mc.num_layers, "num_kv_heads": kv_heads, "head_dim": mc.head_dim,
            "dtype": str(mc.dtype).replace("torch.", ""), "dtype_bytes": dtype_bytes(mc.dtype),
            "tensor_parallel_size": tensor_parallel_size,
            # each rank holds kv_heads // tp heads (what one GPU's counters see under ncu)
            "num_kv_heads_per_rank": max(1, kv_heads // tensor_parallel_size)}


def counters_from_metrics(m: Mapping[str, float]) -> dict[str, int]:
    """The counters the model needs, from a flat get_metrics_dict() (or a delta of two)."""
    g = lambda k: int(m.get(k, 0) or 0)  # noqa: E731
    finished = sum(int(v) for k, v in m.items() if k.startswith("vllm:request_success{"))
    return {"prompt_tokens": g("vllm:prompt_tokens"),
            "prefix_cache_hit_tokens": g("vllm:prefix_cache_hits"),
            "generation_tokens": g("vllm:generation_tokens"),
            "finished_requests": finished,
            "spec_num_drafts": g("vllm:spec_decode_num_drafts"),
            "spec_num_draft_tokens": g("vllm:spec_decode_num_draft_tokens"),
            "spec_num_accepted_tokens": g("vllm:spec_decode_num_accepted_tokens"),
            "nwor_tokens_staged": g("vllm:nwor_tokens_staged"),
            "nwor_tokens_committed": g("vllm:nwor_tokens_committed")}


def kv_bytes_written_model(counters: Mapping[str, int], geometry: Mapping[str, Any]
                           ) -> dict[str, Any]:
    """-> {cache_bytes, staging_bytes, total_bytes, bytes_per_token, cache_bytes_if_off, ...}."""
    c = counters
    P = max(0, c["prompt_tokens"] - c.get("prefix_cache_hit_tokens", 0))
    G, N = c["generation_tokens"], c["finished_requests"]
    D, T, A = c["spec_num_drafts"], c["spec_num_draft_tokens"], c["spec_num_accepted_tokens"]
    S, C = c.get("nwor_tokens_staged", 0), c.get("nwor_tokens_committed", 0)
    plain = max(0, G - N - D - A)
    base = P + D + plain
    tokens = {"prefill": P, "window_committed": D, "plain_decode": plain,
              "drafts": T, "accepted": A, "rejected": T - A, "staged": S, "committed": C,
              "cache": base + C + (T - S), "staging": S, "cache_if_off": base + T,
              "floor": base + A}
    bpt = kv_bytes_per_token(geometry["num_layers"], geometry["num_kv_heads"],
                             geometry["head_dim"], geometry["dtype"])
    tp = int(geometry.get("tensor_parallel_size", 1) or 1)
    bpt_rank = kv_bytes_per_token(geometry["num_layers"],
                                  geometry.get("num_kv_heads_per_rank",
                                               max(1, geometry["num_kv_heads"] // tp)),
                                  geometry["head_dim"], geometry["dtype"])
    out = {
        "bytes_per_token": bpt,
        "bytes_per_token_per_rank": bpt_rank,
        "cache_bytes": tokens["cache"] * bpt,
        "staging_bytes": tokens["staging"] * bpt,
        "total_bytes": (tokens["cache"] + tokens["staging"]) * bpt,
        "cache_bytes_if_off": tokens["cache_if_off"] * bpt,
        "floor_bytes": tokens["floor"] * bpt,
        "cache_bytes_saved": (tokens["cache_if_off"] - tokens["cache"]) * bpt,
        "tokens": tokens,
        "geometry": dict(geometry),
        "scope": "target-model KV only, all ranks (per rank: tokens x bytes_per_token_per_rank)",
    }
    return out
