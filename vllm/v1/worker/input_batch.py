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
from vllm.v1.worker.packed_h2d import PackedH2D


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
    # Tokens sampled by the previous launch, unknown to the host (asynchronous scheduling):
    # their rows in input_ids [U] and the index of the request each belongs to [U].
    unknown_rows: np.ndarray | None = None
    unknown_reqs: np.ndarray | None = None


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
        # Per block-table row: the block-id list it was last filled from and that list's length
        # then (held, so the list is never another's). Unchanged rows are not rewritten.
        self._bt_src: list = [None] * max_reqs
        self._bt_len = [0] * max_reqs
        self._cuda = device.type == "cuda"
        self.logits_idx = torch.zeros(max_tokens, dtype=i64, device=device)
        # Speculative layout (SpecDecodeMetadata's device tensors are views of these): drafts
        # [N_d], their cache slots [N_d], logits rows [N_d + R_s], cumulative counts [R_s].
        self.draft_ids = torch.zeros(max_tokens, dtype=i64, device=device)
        self.draft_slots = torch.zeros(max_tokens, dtype=i64, device=device)
        self.target_rows = torch.zeros(max_tokens, dtype=i64, device=device)
        self.cu_drafts = torch.zeros(max_reqs, dtype=i32, device=device)
        # Per request: allocated blocks (chained steps compute slots on the device) [R].
        self.req_num_blocks = torch.zeros(max_reqs, dtype=i64, device=device)
        # Worst case of one step's staged bytes: 8 int64 + 1 int32 per token, the block
        # tables, per request 44 bytes (3 int32: context lengths, query starts, draft counts;
        # 3 int64: block counts and a chained step's rows and starts; 2 float32: a chained
        # sampling step's temperature and min_p), plus alignment padding.
        nbytes = (8 * 8 + 4) * max_tokens + 4 * max_reqs * max_blocks + 44 * (max_reqs + 1) \
            + 1024
        self._h2d = PackedH2D(nbytes, device)

    def attn_view(self, T: int, with_stage: bool = False) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:T], block_tables=self.block_tables,
            context_lens=self.context_lens, query_start_loc=self.query_start_loc,
            token_req_idx=self.token_req_idx[:T],
            stage_index=self.stage_index[:T] if with_stage else None)

    def prepare(self, so: SchedulerOutput, padded_tokens: int,
                plan: Optional[SpecStepPlan], extra=()) -> StepInputs:
        """plan: the step's speculative plan (None: speculative decoding is off); it says
        whether drafts go to NWOR staging and whether the staging index is passed at all.
        extra: more (device buffer view, host array) pairs to send in the same transfer."""
        stage_drafts = plan is not None and plan.staged
        keep_stage_index = plan is not None and plan.stage_index
        reqs = so.reqs
        R = len(reqs)
        bs = self.block_size
        counts = np.fromiter((len(r.token_ids) for r in reqs), dtype=np.int64, count=R)
        T = int(counts.sum())
        qsl = np.zeros(R + 1, dtype=np.int32)
        np.cumsum(counts, out=qsl[1:])
        starts = np.fromiter((r.start_pos for r in reqs), dtype=np.int64, count=R)
        req_of_tok = np.repeat(np.arange(R, dtype=np.int32), counts)
        offs = np.arange(T, dtype=np.int64) - np.repeat(qsl[:-1].astype(np.int64), counts)
        positions = np.repeat(starts, counts) + offs
        ids = np.fromiter((t for r in reqs for t in r.token_ids), dtype=np.int64, count=T)
        unknown_rows = unknown_reqs = None
        if ids.min() < 0:
            unknown_rows = np.flatnonzero(ids < 0)
            unknown_reqs = req_of_tok[unknown_rows]
            ids[unknown_rows] = 0     # overwritten on the device before the forward

        bt = self._bt_host[:max(R, 1)]
        src, lens = self._bt_src, self._bt_len
        nblk = np.empty(R, dtype=np.int64)
        for i, r in enumerate(reqs):
            b = r.block_ids
            n = len(b)
            nblk[i] = n
            if src[i] is b and lens[i] == n:
                continue    # same request, no new block: the row is already right
            if n > self.max_blocks:
                raise ValueError(f"request {r.req_id} needs {n} blocks > {self.max_blocks}")
            bt[i, :n] = b
            src[i], lens[i] = b, n
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
            if not r.sample or so.chain:
                continue    # (a chained step lays out its logits and drafts on the device)
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

        # Stage into the persistent buffers, padded to padded_tokens: padded tokens carry
        # token 0, position 0, slot -1, request -1 (they neither attend nor write).
        Tp = padded_tokens
        h2d = self._h2d

        def padded(a: np.ndarray, fill) -> np.ndarray:
            if Tp == T:
                return a
            out = np.full(Tp, fill, dtype=a.dtype)
            out[:T] = a
            return out

        h2d.add(self.input_ids[:Tp], padded(ids, 0))
        h2d.add(self.positions[:Tp], padded(positions, 0))
        h2d.add(self.slot_mapping[:Tp], padded(slots, PADDING_SLOT_ID))
        h2d.add(self.token_req_idx[:Tp], padded(req_of_tok, -1))
        stage_t = None
        if stage is not None:
            h2d.add(self.stage_index[:Tp], padded(stage, -1))
            stage_t = self.stage_index[:Tp]
        if R:
            h2d.add(self.block_tables.view(-1)[:R * self.max_blocks], bt[:R].reshape(-1))
        # Unused request rows: empty (query_start_loc stays at T), so no kernel or reference
        # loop over the buffer's full request dimension sees stale requests.
        ctx_full = np.zeros(self.max_reqs, dtype=np.int32)
        ctx_full[:R] = starts
        qsl_full = np.full(self.max_reqs + 1, T, dtype=np.int32)
        qsl_full[:R + 1] = qsl
        h2d.add(self.context_lens, ctx_full)
        h2d.add(self.query_start_loc, qsl_full)
        li = np.asarray(logits_idx, dtype=np.int64)
        h2d.add(self.logits_idx[:len(li)], li)
        for dst, arr in extra:
            h2d.add(dst, arr)
        if so.chain and R:
            h2d.add(self.req_num_blocks[:R], nblk)
        spec = None
        if spec_req:
            # Staged with the rest: a torch.tensor(..., device="cuda") per array would block
            # the host until the GPU is idle, four times a step.
            nd, ns = len(draft_ids), len(spec_req)
            h2d.add(self.draft_ids[:nd], np.asarray(draft_ids, dtype=np.int64))
            h2d.add(self.draft_slots[:nd], np.asarray(draft_slots, dtype=np.int64))
            h2d.add(self.target_rows[:nd + ns], np.asarray(target_rows, dtype=np.int64))
            h2d.add(self.cu_drafts[:ns], np.cumsum(spec_k).astype(np.int32))
            spec = SpecDecodeMetadata(
                req_indices=spec_req, num_draft_tokens=spec_k,
                draft_token_ids=self.draft_ids[:nd], cu_num_draft_tokens=self.cu_drafts[:ns],
                target_logits_rows=self.target_rows[:nd + ns],
                draft_slots=self.draft_slots[:nd])
        h2d.flush()
        attn = self.attn_view(Tp, with_stage=stage_t is not None)
        return StepInputs(
            num_tokens=T, num_reqs=R, attn=attn, input_ids=self.input_ids[:Tp],
            positions=self.positions[:Tp],
            logits_indices=self.logits_idx[:len(li)],
            logits_indices_host=li, req_first_row=first_row, spec=spec,
            hidden_rows_per_req=rows_per_req, unknown_rows=unknown_rows,
            unknown_reqs=unknown_reqs)
