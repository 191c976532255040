"""NWOR (no-write-on-reject): drafts' K/V are staged during the verify forward and only the
accepted ones are scattered into the paged KV cache afterwards.

Staging buffer: [layers, max_staged, 2, kv_heads, head_dim], allocated once (static address,
so CUDA graphs that write into it stay valid). Row s holds the s-th draft token of the step.
The attention kernels read this step's K/V from the projection outputs, so the verify forward
never needs the drafts in the cache; after the rejection sampler, one commit kernel moves the
accepted rows (all layers, one launch) into their slots. Rejected rows are dropped."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from vllm.logger import init_logger, log_once
from vllm.v1.spec_decode.nwor_commit import commit_staged_kv

logger = init_logger(__name__)


@dataclass
class NworStats:
    tokens_staged: int = 0
    tokens_committed: int = 0
    windows: int = 0
    fallbacks: int = 0

    @property
    def writes_saved_pct(self) -> float:
        if not self.tokens_staged:
            return 0.0
        return 100.0 * (self.tokens_staged - self.tokens_committed) / self.tokens_staged


class NworStager:
    def __init__(self, mode: str, num_layers: int, max_staged: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device, debug: bool):
        self.mode = mode
        self.debug = debug
        self.max_staged = max_staged
        self.stats = NworStats()
        self.staging: Optional[torch.Tensor] = None
        if mode == "stage" and max_staged > 0:
            self.staging = torch.zeros(num_layers, max_staged, 2, num_kv_heads, head_dim,
                                       dtype=dtype, device=device)

    @property
    def enabled(self) -> bool:
        return self.staging is not None

    def use_for_step(self, num_drafts: int) -> bool:
        """Whether this step stages its drafts; if the buffer is too small the step takes the
        off path (drafts written straight to the cache), is counted, and logged once."""
        if not self.enabled or num_drafts == 0:
            return False
        if num_drafts > self.max_staged:
            self.stats.fallbacks += 1
            log_once(logger, logging.WARNING, "nwor-too-small",
                     "NWOR: %d drafts exceed the staging buffer (%d rows); this step (and any "
                     "like it) writes drafts directly to the KV cache", num_drafts,
                     self.max_staged)
            if self.debug:
                logger.info("NWOR: fallback to the off path for a window of %d drafts",
                            num_drafts)
            return False
        return True

    def begin(self, num_drafts: int, num_reqs: int) -> None:
        self.stats.windows += 1
        self.stats.tokens_staged += num_drafts
        if self.debug:
            logger.info("NWOR: Beginning window with %d draft tokens across %d requests",
                        num_drafts, num_reqs)

    def commit(self, kv_cache: torch.Tensor, commit_slots: torch.Tensor) -> None:
        """commit_slots [N_d] int64: cache slot for accepted drafts, -1 for rejected ones."""
        n = commit_slots.shape[0]
        commit_staged_kv(self.staging[:, :n], kv_cache, commit_slots)

    def record(self, accepted_per_req: list[int]) -> None:
        total = sum(accepted_per_req)
        self.stats.tokens_committed += total
        if self.debug:
            logger.info("NWOR: Committing %d accepted tokens (per-req: %s)", total,
                        accepted_per_req)
