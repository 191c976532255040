"""Per-step speculative-decoding metadata: the step's plan (built by SpecDecodeStep.plan) and
the drafts' layout (built by the runner's input preparation), consumed by verification and the
NWOR commit."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass
class SpecDecodeMetadata:
    # R_s = requests with drafts this step; N_d = their drafts in total
    req_indices: list[int]              # host: index of each such request in the batch
    num_draft_tokens: list[int]         # host: k_r per request (>= 1 here)
    draft_token_ids: torch.Tensor       # [N_d] int64, device
    cu_num_draft_tokens: torch.Tensor   # [R_s] int32, device, cumulative end offsets
    target_logits_rows: torch.Tensor    # [N_d + R_s] int64: rows of the logits matrix, per
                                        # request its k_r draft positions then its bonus one
    draft_slots: torch.Tensor           # [N_d] int64: cache slot of each draft token
    draft_probs: Optional[torch.Tensor] = None   # [N_d, V] or None (n-gram: one-hot q)

    @property
    def max_spec_len(self) -> int:
        return max(self.num_draft_tokens)

    @property
    def total_drafts(self) -> int:
        return sum(self.num_draft_tokens)


@dataclass(frozen=True)
class SpecStepPlan:
    """How one step treats its drafts, decided once before the step's inputs are prepared.

    staged: the drafts' K/V go to NWOR staging rows instead of the cache (and are committed
    after verification). stage_index: the attention kernels get a staging index even when
    nothing is staged (all -1), because the CUDA graphs were captured with one.
    drafts: the step's draft layout, attached after input preparation (None: no drafts)."""
    staged: bool
    stage_index: bool
    drafts: Optional[SpecDecodeMetadata] = None

    def with_drafts(self, drafts: SpecDecodeMetadata) -> "SpecStepPlan":
        return replace(self, drafts=drafts)


def draft_spans(cu_num_draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cu [R] cumulative end offsets -> (starts [R], ends [R]) int64: request r's drafts are
    rows starts[r] .. ends[r] - 1 of the flat draft tensors."""
    ends = cu_num_draft_tokens.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]]) if ends.numel() else ends
    return starts, ends
