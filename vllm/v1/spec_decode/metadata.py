"""Per-step speculative-decoding metadata (built by the runner, consumed by verification and
the NWOR commit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

PLACEHOLDER_TOKEN_ID = -1   # rejected / padding positions in [R, k + 1] outputs
PADDING_SLOT_ID = -1        # "do not write" in slot mappings


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
