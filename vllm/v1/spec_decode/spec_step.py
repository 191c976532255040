"""The verify half of a speculative step, as the model runner calls it: the step's plan, then
rejection sampling, the SCV acceptance mask, and the NWOR commit of accepted drafts' K/V.

Per step the runner calls plan() (before preparing inputs), verify_and_commit() (after the
forward) and to_host() (the step's one host sync), all driven by the same SpecStepPlan."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.platform import to_device_async
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID
from vllm.v1.core.sched_output import SchedulerOutput
from vllm.v1.sample.rejection_sampler import RejectionSampler
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata, SpecStepPlan
from vllm.v1.spec_decode.metrics import SpecDecodingStats
from vllm.v1.spec_decode.nwor import NworStager, NworStats
from vllm.v1.spec_decode.nwor_commit import acceptance_to_commit_slots
from vllm.v1.spec_decode.scv import ScvStats, ScvVerifier, resolve_scv_mode

logger = init_logger(__name__)


@dataclass(frozen=True)
class SpecDecodeCounters:
    """Live references to one engine's speculative-decoding counters (they keep counting)."""
    spec: SpecDecodingStats
    nwor: NworStats
    nwor_mode: str
    scv_mode: str
    scv: ScvStats


class SpecDecodeStep:
    def __init__(self, config: VllmConfig, device: torch.device, num_layers: int,
                 num_kv_heads: int, head_dim: int, dtype: torch.dtype):
        sc = config.speculative_config
        opts = config.spec_options
        k = sc.num_speculative_tokens
        max_reqs = config.scheduler_config.max_num_seqs
        max_staged = min(max_reqs * k, config.scheduler_config.max_num_batched_tokens)
        self.nwor = NworStager(opts.nwor_mode, num_layers, max_staged, num_kv_heads, head_dim,
                               dtype, device, opts.nwor_debug)
        self.scv_mode = resolve_scv_mode(opts.scv_mode, device)
        self.k = k
        self.scv = ScvVerifier(self.scv_mode, device, max_reqs, k)
        if device.type == "cuda":
            self.scv.warmup(widths=[k])   # capture now: a capture mid-serving would sync
        self.rejection_sampler = RejectionSampler()
        self.stats = SpecDecodingStats(num_spec_tokens=k)
        self.acceptance_rate = sc.acceptance_rate
        self.device = device
        self._ctrl_gen: Optional[torch.Generator] = None
        if self.acceptance_rate is not None:
            self._ctrl_gen = torch.Generator(device=device)
            self._ctrl_gen.manual_seed(config.model_config.seed + 1234)
        logger.info("Spec decode enabled: method=%s k=%d NWOR_MODE=%s SCV_MODE=%s "
                    "NWOR_DEBUG=%s%s", sc.method, k, opts.nwor_mode, self.scv_mode,
                    opts.nwor_debug,
                    f" CONTROLLED acceptance_rate={self.acceptance_rate} (benchmark only)"
                    if self.acceptance_rate is not None else "")

    @property
    def staging(self) -> Optional[torch.Tensor]:
        """NWOR's staging buffer [L, S, 2, Hkv, D] (static address), or None when not staging."""
        return self.nwor.staging

    def counters(self) -> SpecDecodeCounters:
        return SpecDecodeCounters(self.stats, self.nwor.stats, self.nwor.mode, self.scv_mode,
                                  self.scv.stats)

    def plan(self, so: SchedulerOutput) -> SpecStepPlan:
        """Decided once per step, before its inputs are prepared."""
        return SpecStepPlan(staged=self.nwor.use_for_step(so.num_spec_tokens),
                            stage_index=self.nwor.enabled)

    def verify_and_commit(self, plan: SpecStepPlan, logits: torch.Tensor,
                          md: SamplingMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
        """logits [N, V]: all logits rows of the step. Returns [R_s, max_k + 1] token ids
        padded with PLACEHOLDER_TOKEN_ID; launches the NWOR commit when drafts were staged."""
        spec = plan.drafts
        target_logits = logits[spec.target_logits_rows]
        if self.acceptance_rate is None:
            out = self.rejection_sampler(spec.draft_token_ids, spec.num_draft_tokens,
                                         spec.draft_probs, target_logits, md)
        else:
            out = self._controlled(spec, target_logits)
        if plan.staged:
            self.nwor.begin(spec.total_drafts, len(spec.num_draft_tokens))
        res = self.scv.compute(spec.draft_token_ids, spec.cu_num_draft_tokens, out,
                               num_draft_tokens=spec.num_draft_tokens, max_spec_len=self.k)
        if plan.staged:
            slots = acceptance_to_commit_slots(res.accepted_mask, spec.draft_slots,
                                               spec.cu_num_draft_tokens)
            self.nwor.commit(kv_cache, slots)
        return out

    def _controlled(self, spec: SpecDecodeMetadata, target_logits: torch.Tensor) -> torch.Tensor:
        """Benchmark-only acceptance on dummy weights: each draft is accepted with probability
        `acceptance_rate` (until the first rejection); the emitted token after the accepted
        prefix is the target argmax, forced to differ from the rejected draft."""
        R, K = len(spec.num_draft_tokens), spec.max_spec_len
        ks = to_device_async(torch.tensor(spec.num_draft_tokens), self.device)
        cu = spec.cu_num_draft_tokens.long()
        starts = cu - ks
        pos = torch.arange(K, device=self.device)
        valid = pos[None, :] < ks[:, None]
        idx = (starts[:, None] + pos[None, :]).clamp(max=spec.draft_token_ids.numel() - 1)
        drafts = torch.where(valid, spec.draft_token_ids[idx], PLACEHOLDER_TOKEN_ID)
        u = torch.rand(R, K, generator=self._ctrl_gen, device=self.device)
        acc = ((u < self.acceptance_rate) & valid).int().cumprod(dim=1)
        n_acc = acc.sum(dim=1)
        # logits rows of request r: starts[r] + r .. (its drafts, then its bonus row)
        row = starts + torch.arange(R, device=self.device) + n_acc
        tok = target_logits[row].argmax(dim=-1)
        rej_draft = torch.where(n_acc < ks, drafts.gather(1, n_acc.clamp(max=K - 1)[:, None])[:, 0],
                                -2)
        tok = torch.where(tok == rej_draft, (tok + 1) % target_logits.shape[1], tok)
        out = torch.full((R, K + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64, device=self.device)
        out[:, :K] = torch.where(acc.bool(), drafts, PLACEHOLDER_TOKEN_ID)
        out.scatter_(1, n_acc[:, None], tok[:, None])
        return out

    def to_host(self, plan: SpecStepPlan, out: torch.Tensor) -> list[list[int]]:
        """Copies the verified tokens to the host (a sync) and records the step's counters.
        Returns per request of plan.drafts.req_indices its emitted tokens."""
        rows = out.tolist()
        toks = [[t for t in row if t != PLACEHOLDER_TOKEN_ID] for row in rows]
        accepted = [len(t) - 1 for t in toks]
        for k, a in zip(plan.drafts.num_draft_tokens, accepted):
            self.stats.observe(k, a)
        if plan.staged:
            self.nwor.record(accepted)
        return toks
