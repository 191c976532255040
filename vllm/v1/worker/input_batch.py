"""Host-side preparation of one step's inputs into persistent device buffers.

The buffers have fixed addresses (CUDA graphs replay against them); a step fills their first
T (tokens) / R (requests) rows and pads the rest so that padded tokens write nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vllm.forward_context import AttentionMetadata
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.core.sched_output import SchedulerOutput
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata, SpecStepPlan


@dataclass
class StepInputs:
    num_tokens: int                 # T (unpadded)
    num_reqs: int                   # R
    attn: AttentionMetadata         # views of the persistent buffers, padded to the run size
    input_ids: torch.Tensor
    positions: torch.Tensor
    logits_indices: torch.Tensor    # [N] rows of the hidden states that need logits
    logits_indices_host: np.ndarray
    req_first_row: list[int]        # per request: its first row in the logits matrix (-1: none)
    spec: SpecDecodeMetadata | None
    hidden_rows_per_req: list[tuple[int, int]]  # token row range of each request


class InputBuffers:
    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, block_size: int,
                 device: torch.device):
        self.device = device
        self.block_size = block_size
        self.max_tokens = max_tokens
        self.max_reqs = max_reqs
        self.max_blocks = max_blocks
        i32, i64 = torch.int32, torch.int64
        self.input_ids = torch.zeros(max_tokens, dtype=i64, device=device)
        self.positions = torch.zeros(max_tokens, dtype=i64, device=device)
        self.slot_mapping = torch.full((max_tokens,), PADDING_SLOT_ID, dtype=i64, device=device)
        self.stage_index = torch.full((max_tokens,), -1, dtype=i64, device=device)
        self.token_req_idx = torch.full((max_tokens,), -1, dtype=i32, device=device)
        self.block_tables = torch.zeros(max_reqs, max_blocks, dtype=i32, device=device)
        self.context_lens = torch.zeros(max_reqs, dtype=i32, device=device)
        self.query_start_loc = torch.zeros(max_reqs + 1, dtype=i32, device=device)
        self._bt_host = np.zeros((max_reqs, max_blocks), dtype=np.int32)
        self._cuda = device.type == "cuda"
        # Pinned host mirrors of the device buffers (allocated once): H2D copies are then
        # truly asynchronous and no step pays for pinning fresh memory.
        self._mirror: dict[int, torch.Tensor] = {}
        self._copied = torch.cuda.Event() if self._cuda else None
        self._pending = False

    def _h2d(self, dst: torch.Tensor, src: np.ndarray) -> None:
        t = torch.from_numpy(src)
        if not self._cuda:
            dst[:len(src)].copy_(t)
            return
        base = dst if dst._base is None else dst._base
        host = self._mirror.get(id(base))
        if host is None:
            host = torch.empty(base.numel(), dtype=base.dtype, pin_memory=True)
            self._mirror[id(base)] = host
        n = len(src)
        host[:n].copy_(t)
        dst.reshape(-1)[:n].copy_(host[:n], non_blocking=True)

    def _wait_previous_copies(self) -> None:
        # A drafter runs several forwards between host syncs: do not overwrite a pinned mirror
        # the GPU has not read yet. In the main step loop this is already complete (no wait).
        if self._pending:
            self._copied.synchronize()
            self._pending = False

    def _mark_copies(self) -> None:
        if self._cuda:
            self._copied.record()
            self._pending = True

    def attn_view(self, T: int, with_stage: bool = False) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:T], block_tables=self.block_tables,
            context_lens=self.context_lens, query_start_loc=self.query_start_loc,
            token_req_idx=self.token_req_idx[:T],
            stage_index=self.stage_index[:T] if with_stage else None)

    def prepare(self, so: SchedulerOutput, padded_tokens: int,
                plan: Optional[SpecStepPlan]) -> StepInputs:
        """plan: the step's speculative plan (None: speculative decoding is off); it says
        whether drafts go to NWOR staging and whether the staging index is passed at all."""
        stage_drafts = plan is not None and plan.staged
        keep_stage_index = plan is not None and plan.stage_index
        reqs = so.reqs
        R = len(reqs)
        bs = self.block_size
        self._wait_previous_copies()
        counts = np.fromiter((len(r.token_ids) for r in reqs), dtype=np.int64, count=R)
        T = int(counts.sum())
        qsl = np.zeros(R + 1, dtype=np.int32)
        np.cumsum(counts, out=qsl[1:])
        starts = np.fromiter((r.start_pos for r in reqs), dtype=np.int64, count=R)
        req_of_tok = np.repeat(np.arange(R, dtype=np.int32), counts)
        offs = np.arange(T, dtype=np.int64) - np.repeat(qsl[:-1].astype(np.int64), counts)
        positions = np.repeat(starts, counts) + offs
        ids = np.fromiter((t for r in reqs for t in r.token_ids), dtype=np.int64, count=T)

        bt = self._bt_host[:max(R, 1)]
        for i, r in enumerate(reqs):
            n = len(r.block_ids)
            if n > self.max_blocks:
                raise ValueError(f"request {r.req_id} needs {n} blocks > {self.max_blocks}")
            bt[i, :n] = r.block_ids
        nblk = np.fromiter((len(r.block_ids) for r in reqs), dtype=np.int64, count=R)
        blk_idx = positions // bs
        in_table = blk_idx < nblk[req_of_tok]
        slot_blocks = bt[req_of_tok, np.minimum(blk_idx, self.max_blocks - 1)].astype(np.int64)
        # A position past the request's allocated blocks (a drafter near max_model_len) must
        # write nowhere rather than into a stale block-table entry.
        slots = np.where(in_table, slot_blocks * bs + positions % bs, PADDING_SLOT_ID)

        # Rows needing logits, and the speculative-decoding layout.
        logits_idx: list[int] = []
        first_row = [-1] * R
        spec_req, spec_k, draft_ids, draft_slots, target_rows = [], [], [], [], []
        stage = np.full(T, -1, dtype=np.int64) if (stage_drafts or keep_stage_index) else None
        n_staged = 0
        rows_per_req = []
        for i, r in enumerate(reqs):
            end = int(qsl[i + 1])
            rows_per_req.append((int(qsl[i]), end))
            if not r.sample:
                continue
            first = end - 1 - r.num_spec        # the last non-draft token
            first_row[i] = len(logits_idx)
            if r.num_spec:
                spec_req.append(i)
                spec_k.append(r.num_spec)
                draft_ids.extend(r.token_ids[-r.num_spec:])
                draft_slots.extend(slots[first + 1:end].tolist())
                target_rows.extend(range(len(logits_idx), len(logits_idx) + r.num_spec + 1))
                if stage_drafts:
                    # Drafts' K/V go to staging rows, not to the cache (NWOR).
                    stage[first + 1:end] = np.arange(n_staged, n_staged + r.num_spec)
                    n_staged += r.num_spec
            logits_idx.extend(range(first, end))
        if n_staged:
            slots = np.where(stage >= 0, PADDING_SLOT_ID, slots)

        # Copy into the persistent buffers; pad to padded_tokens.
        Tp = padded_tokens
        self._h2d(self.input_ids, ids)
        self._h2d(self.positions, positions)
        self._h2d(self.slot_mapping, slots)
        self._h2d(self.token_req_idx, req_of_tok)
        if Tp > T:
            self.slot_mapping[T:Tp].fill_(PADDING_SLOT_ID)
            self.token_req_idx[T:Tp].fill_(-1)
            self.input_ids[T:Tp].zero_()
            self.positions[T:Tp].zero_()
        stage_t = None
        if stage is not None:
            self._h2d(self.stage_index, stage)
            if Tp > T:
                self.stage_index[T:Tp].fill_(-1)
            stage_t = self.stage_index[:Tp]
        self._h2d(self.block_tables.view(-1), bt.reshape(-1)) if R else None
        # Unused request rows: empty (query_start_loc stays at T), so no kernel or reference
        # loop over the buffer's full request dimension sees stale requests.
        ctx_full = np.zeros(self.max_reqs, dtype=np.int32)
        ctx_full[:R] = starts
        qsl_full = np.full(self.max_reqs + 1, T, dtype=np.int32)
        qsl_full[:R + 1] = qsl
        self._h2d(self.context_lens, ctx_full)
        self._h2d(self.query_start_loc, qsl_full)
        attn = self.attn_view(Tp, with_stage=stage_t is not None)
        self._mark_copies()
        li = np.asarray(logits_idx, dtype=np.int64)
        spec = None
        if spec_req:
            dev = self.device
            spec = SpecDecodeMetadata(
                req_indices=spec_req, num_draft_tokens=spec_k,
                draft_token_ids=torch.tensor(draft_ids, dtype=torch.int64, device=dev),
                cu_num_draft_tokens=torch.tensor(np.cumsum(spec_k), dtype=torch.int32,
                                                 device=dev),
                target_logits_rows=torch.tensor(target_rows, dtype=torch.int64, device=dev),
                draft_slots=torch.tensor(draft_slots, dtype=torch.int64, device=dev))
        return StepInputs(
            num_tokens=T, num_reqs=R, attn=attn, input_ids=self.input_ids[:Tp],
            positions=self.positions[:Tp],
            logits_indices=torch.from_numpy(li).to(self.device, non_blocking=True),
            logits_indices_host=li, req_first_row=first_row, spec=spec,
            hidden_rows_per_req=rows_per_req)
