"""Running a drafter (a separate draft model, or an EAGLE head) over its own paged KV cache.

The drafter's cache has the target's block layout (same block ids, same block size), so a
request's block table serves both; the scheduler's lookahead slots hold the drafter's K/V of
its own speculative tokens. Those K/V are overwritten next step: the drafter's `computed`
count only ever covers committed tokens (we do not apply NWOR to the drafter's own cache: its
writes are k tokens of a model far smaller than the target, and the next step needs the
accepted ones immediately, so staging would add a copy for little saving).

On CUDA the drafter's forward replays CUDA graphs (one per token count, CudaGraphRunner) over the
persistent buffers of DraftBatch; batches larger than every captured size run eagerly."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from vllm import envs
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched_output import ScheduledReq, SchedulerOutput
from vllm.v1.worker.cudagraph import CudaGraphRunner, default_capture_sizes
from vllm.v1.worker.input_batch import InputBuffers

_GREEDY = SamplingParams(temperature=0.0)

# Largest drafter batch (tokens) replayed from a CUDA graph; larger catch-ups run eagerly.
MAX_DRAFT_GRAPH_TOKENS = 512

# forward(input_ids [T], positions [T], T) -> hidden [T, H], over the first T buffer rows.
DraftForward = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def draft_graphs_wanted(config, device: torch.device) -> bool:
    return (device.type == "cuda" and not config.enforce_eager
            and bool(envs.get("VLLM_DRAFT_CUDA_GRAPHS")))


class DraftBatch:
    """Flattens (tokens, start position, block table) per request into the drafter's buffers."""

    graph_runner_cls = CudaGraphRunner

    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, block_size: int,
                 device: torch.device, hidden_size: int = 0, dtype: Optional[torch.dtype] = None):
        self.buffers = InputBuffers(max_tokens, max_reqs, max_blocks, block_size, device)
        self.graphs = self.graph_runner_cls([])
        self.device = device
        self.block_size = block_size
        # Per-request block counts of the last one-token-per-request graph step, for
        # run_graph_next ([max_reqs] int64 on the device; a pinned host mirror on CUDA).
        self._nblk = torch.zeros(max_reqs, dtype=torch.int64, device=device)
        self._nblk_host = torch.zeros(max_reqs, dtype=torch.int64,
                                      pin_memory=device.type == "cuda")
        self._nblk_copied = torch.cuda.Event() if device.type == "cuda" else None
        self._next: Optional[tuple[int, int]] = None     # (R, padded T) for run_graph_next
        # EAGLE: the target's hidden states as a persistent graph input [max graph tokens, H].
        self.hidden = None
        if hidden_size:
            rows = min(max_tokens, MAX_DRAFT_GRAPH_TOKENS)
            self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device)

    @staticmethod
    def _sched(items) -> SchedulerOutput:
        return SchedulerOutput(reqs=[ScheduledReq(rid, toks, 0, start, blocks, True, _GREEDY,
                                                  prompt_len=0)
                                     for rid, toks, start, blocks in items],
                               num_tokens=sum(len(t) for _, t, _, _ in items))

    def capture(self, forward: DraftForward, kv_cache: torch.Tensor, max_graph_tokens: int) -> None:
        """CUDA graphs of ``forward`` over the first T rows of the persistent buffers, one per
        token count T up to max_graph_tokens (a per-token drafting step has T = number of
        requests; a catch-up T = the tokens committed since the last call). Capture failure:
        logged once by CudaGraphRunner, and every call runs eagerly."""
        bufs = self.buffers
        # Capture-time forwards must write nothing into the drafter's cache: fresh buffers hold
        # slot -1 and request id -1 everywhere; make sure of it.
        bufs.slot_mapping.fill_(-1)
        bufs.token_req_idx.fill_(-1)

        def run_forward(T: int) -> torch.Tensor:
            with set_forward_context(ForwardContext(bufs.attn_view(T), kv_cache)):
                return forward(bufs.input_ids[:T], bufs.positions[:T], T)

        limit = min(max_graph_tokens, bufs.max_tokens, MAX_DRAFT_GRAPH_TOKENS)
        self.graphs = self.graph_runner_cls(default_capture_sizes(limit), name="draft")
        with torch.inference_mode():
            self.graphs.capture(run_forward)

    def run_graph(self, kv_cache: torch.Tensor, items, input_ids: Optional[torch.Tensor] = None,
                  hidden: Optional[torch.Tensor] = None):
        """Like run, from a captured graph. input_ids [T] (device) replaces the items' token ids
        (drafting steps feed the previous argmax without a host round trip); hidden [T, H]
        fills the EAGLE hidden-state input. Returns None when no graph fits (run eagerly)."""
        self._next = None
        T = sum(len(t) for _, t, _, _ in items)
        Tp = self.graphs.padded_size(T)
        if Tp is None:
            return None
        inp = self.buffers.prepare(self._sched(items), Tp, stage_drafts=False)
        if input_ids is not None:
            self.buffers.input_ids[:T].copy_(input_ids)
        if hidden is not None:
            self.hidden[:T].copy_(hidden)
        if T == len(items):     # one token per request: the next step can advance on the device
            R = T
            if self._nblk_copied is not None:
                self._nblk_copied.synchronize()     # the previous copy has left the mirror
            self._nblk_host[:R] = torch.tensor([len(b) for _, _, _, b in items])
            self._nblk[:R].copy_(self._nblk_host[:R], non_blocking=True)
            if self._nblk_copied is not None:
                self._nblk_copied.record()
            self._next = (R, Tp)
        return self.graphs.replay(Tp)[:T], inp.logits_indices, inp

    def run_graph_next(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """The drafting step after a one-token-per-request run_graph (or run_graph_next): every
        request's single token moves one position on, so positions, context lengths and cache
        slots advance on the device — no host preparation, no host-to-device copy, no sync.
        input_ids [R] (device): the previous argmax; hidden [R, H]: EAGLE's features. Returns
        hidden [R, H] (row r = request r's token), or None (no such previous step: run_graph)."""
        if self._next is None:
            return None
        R, Tp = self._next
        b, bs = self.buffers, self.block_size
        pos = b.positions[:R]
        pos += 1
        b.context_lens[:R] += 1
        blk_idx = pos // bs
        blk = b.block_tables[:R].gather(
            1, blk_idx.clamp(max=b.max_blocks - 1).unsqueeze(1)).squeeze(1).long()
        # A position past the request's allocated blocks writes nowhere (as prepare does).
        b.slot_mapping[:R] = torch.where(blk_idx < self._nblk[:R], blk * bs + pos % bs, -1)
        b.input_ids[:R].copy_(input_ids)
        if hidden is not None:
            self.hidden[:R].copy_(hidden)
        return self.graphs.replay(Tp)[:R]

    def run(self, model, kv_cache: torch.Tensor, items: list[tuple[str, list[int], int, list[int]]],
            inputs_embeds_fn=None):
        """items: (req_id, token_ids, start_pos, block_ids). Returns (hidden [T, H],
        last_rows [R] indices of each request's last token, step inputs)."""
        so = self._sched(items)
        inp = self.buffers.prepare(so, so.num_tokens, stage_drafts=False)
        ctx = ForwardContext(inp.attn, kv_cache)
        with set_forward_context(ctx):
            embeds = inputs_embeds_fn(inp) if inputs_embeds_fn is not None else None
            hidden = model(inp.input_ids, inp.positions, inputs_embeds=embeds)
        return hidden, inp.logits_indices, inp


def greedy_with_confidence(logits: torch.Tensor, threshold: float):
    """argmax token per row and whether its probability clears the early-exit threshold."""
    tok = logits.argmax(dim=-1)
    if threshold <= 0:
        return tok, None
    conf = torch.softmax(logits, dim=-1).gather(1, tok[:, None])[:, 0]
    return tok, conf >= threshold


def trim_at_low_confidence(drafts: list[list[int]], ok: Optional[list[list[bool]]]):
    if ok is None:
        return drafts
    out = []
    for d, o in zip(drafts, ok):
        n = 0
        while n < len(d) and o[n]:
            n += 1
        out.append(d[:n])
    return out
