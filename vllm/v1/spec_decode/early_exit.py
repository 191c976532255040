"""Which requests of one drafting call still draft, decided on the device.

A request stops drafting at its first draft whose top-1 probability falls below the confidence
threshold, or once it has its own number of drafts (ProposeReq.max_drafts). A stopped request
stays in the batch (so CUDA-graph shapes do not change) but its later steps write no K/V into
the drafter's cache (its slots become PADDING_SLOT_ID) and its later drafts are dropped. No step
syncs with the host: the kept-draft counts travel to the host with the drafts, in one copy."""
from __future__ import annotations

from typing import Optional

import torch

from vllm.platform import to_device_async


class DraftExit:
    def __init__(self, caps: list[int], device: torch.device):
        # caps [R]: drafts each request may keep (all >= 1); steps = the most of them.
        self.caps_host = caps
        self.steps = max(caps)
        uniform = all(c == self.steps for c in caps)
        # [R] int64 on the device; None when every request drafts `steps` (nothing to cap).
        self.caps = None if uniform else to_device_async(torch.tensor(caps), device)
        self.keep: Optional[torch.Tensor] = None     # [R] bool: kept the last draft
        self.counts: Optional[torch.Tensor] = None   # [R] int64: drafts kept so far

    def observe(self, step: int, ok: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """After drafting step `step` (ok [R] bool: its drafts are confident; None: all are).
        Returns the write mask of step + 1 ([R] bool: the requests whose next draft can still
        be kept), or None when every request drafts on."""
        keep = ok
        if self.keep is not None:
            keep = self.keep if keep is None else self.keep & keep
        if self.caps is not None:
            under = self.caps > step
            keep = under if keep is None else keep & under
        if keep is None:
            return None
        self.keep = keep
        self.counts = keep.long() if self.counts is None else self.counts + keep
        if self.caps is None:
            return keep
        return keep & (self.caps > step + 1)

    def to_host(self, toks: list[torch.Tensor]) -> tuple[list[list[int]], int]:
        """toks: per step the drafts [R]. Returns each request's kept drafts and the number of
        drafts stopped by the confidence exit (caps minus kept). One device-to-host copy."""
        drafts = torch.stack(toks, 1)                             # [R, steps]
        if self.counts is None:
            return drafts.tolist(), 0
        rows = torch.cat([drafts, self.counts[:, None]], 1).tolist()    # [R, steps + 1]
        out = [row[:row[-1]] for row in rows]
        stopped = sum(c - len(d) for c, d in zip(self.caps_host, out))
        return out, stopped
