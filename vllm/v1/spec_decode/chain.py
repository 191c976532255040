"""Chained speculative steps: verification, the drafter's catch-up and the next step's drafts
in one launch on the device (one CUDA graph per padded batch size), so the next step can be
launched before this one's tokens reach the host.

A chained step verifies k drafts for every request of the batch (greedy). Per request row r
with start position s (the position of its last committed token t, whose K/V are not in the
cache yet) and input tokens [t, d_1 .. d_k] at positions s .. s + k:

  target forward -> argmax a_0 .. a_k (a_j: the target's token after input j)
  rejection scan + SCV mask -> accepted prefix n (a_j == d_{j+1} for j < n); emitted tokens
      a_0 .. a_n (the accepted drafts, then the recovered-or-bonus token a_n)
  drafter catch-up over all k + 1 rows (tokens a_0 .. a_k), keeping row n: rows past n see
      rejected tokens, but causally row n only sees accepted ones, and the drafter K/V the
      rows past n wrote sit at positions the next step's catch-up writes again before any
      query reads them
  k - 1 single-token drafter steps -> the next drafts d'_1 .. d'_k
  state: next start s + n + 1, next input tokens [a_n, d'_1 .. d'_k]

The next chained step gathers its inputs from that state by row (requests may finish or be
aborted in between), on the device: the host never needs this step's tokens to launch the
next one. It learns them one step later, applies them (stop checks, detokenization) and
rewinds its optimistic position count by the rejected drafts, exactly as after a synchronous
verify step. Requests that enter a chain (their drafts came from the host) carry their tokens
and start position from the host.

With NWOR staging the drafts' K/V go to staging rows during the verify forward and the SCV
mask commits the accepted ones to the cache inside the same graph.

With n-gram drafting the step keeps each row's token history on the device instead and looks
the next drafts up there (ngram_device.py); there is no drafter cache.

The drafter's cache: for EAGLE the entry at position p pairs the target's hidden state at p
with the token at p + 1 (catch-up rows at positions s .. s + k); for a draft model the entry at
p is the token at p (rows at s + 1 .. s + k + 1): `chain_position_offset` 0 or 1."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from vllm import envs
from vllm.forward_context import AttentionMetadata
from vllm.logger import init_logger, log_once
from vllm.v1.constants import PADDING_SLOT_ID, UNKNOWN_TOKEN_ID
from vllm.sampling_params import _SAMPLING_EPS
from vllm.v1.sample.rejection_sampler import rejection_scan
from vllm.v1.sample.sampler import apply_temperature, apply_top_k_top_p_min_p
from vllm.v1.spec_decode.ngram_device import ngram_propose_device
from vllm.v1.spec_decode.nwor_commit import commit_staged_kv
from vllm.v1.spec_decode.scv import scv_compute_mask

logger = init_logger(__name__)


def chain_unsupported_reason(config) -> Optional[str]:
    """Why this configuration cannot chain speculative steps (None: it can)."""
    sc = config.speculative_config
    opts = config.spec_options
    if sc is None:
        return "speculative decoding is off"
    if not envs.get("VLLM_SPEC_CHAIN"):
        return "VLLM_SPEC_CHAIN=0"
    if sc.method not in ("eagle", "draft_model", "ngram"):
        return f"method {sc.method!r} cannot draft on the device"
    if not config.scheduler_config.async_scheduling:
        return "asynchronous scheduling is off"
    if config.parallel_config.tensor_parallel_size > 1:
        return "tensor parallelism"
    if opts.scv_mode == "off":
        return "SCV mode 'off' (the host reference loop)"
    if sc.confidence_threshold > 0:
        return "a confidence threshold (per-request draft lengths)"
    if sc.acceptance_rate is not None:
        return "a controlled acceptance rate (benchmark mode)"
    return None


def chain_sampling_ok(params) -> bool:
    """A drafting request's sampling fits a chained step: greedy, or random without a seed (a
    per-request generator cannot be replayed from a graph) and without top-k / top-p (their
    sort over the vocabulary for every verified position is left to synchronous steps); no
    logprobs (computed from the host's tokens). (Penalties and an active min_tokens mask
    already keep a request from drafting at all.)"""
    random_ok = (params.seed is None and params.top_k in (0, -1) and params.top_p >= 1.0)
    return (params.is_greedy or random_ok) and params.logprobs is None


def step_samples(reqs) -> bool:
    """Some request of a chained step samples (the step runs the sampling variant)."""
    return any(not r.params.is_greedy for r in reqs)


def slots_for(block_tables: torch.Tensor, num_blocks: torch.Tensor, positions: torch.Tensor,
              valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slots of positions [R, N] (int64) through block_tables [R, B] (int32);
    PADDING_SLOT_ID where not valid [R, N] or past the request's num_blocks [R] blocks."""
    blk_idx = positions // block_size
    ok = valid & (blk_idx < num_blocks[:, None])
    blk = block_tables.gather(1, blk_idx.clamp(0, block_tables.shape[1] - 1)).long()
    return torch.where(ok, blk * block_size + positions % block_size, PADDING_SLOT_ID)


def chain_attention(block_tables: torch.Tensor, num_blocks: torch.Tensor,
                    starts: torch.Tensor, width: int, valid_req: torch.Tensor,
                    block_size: int, max_reqs: int) -> tuple[AttentionMetadata, torch.Tensor]:
    """Attention metadata of `width` consecutive tokens per request from starts [R] (R rows,
    padded ones not valid): -> (metadata over T = R * width tokens, positions [T])."""
    R = starts.shape[0]
    dev = starts.device
    offs = torch.arange(width, device=dev)
    pos = starts[:, None] + offs[None, :]                                   # [R, W]
    valid = valid_req[:, None].expand(R, width)
    slots = slots_for(block_tables[:R], num_blocks[:R], pos, valid, block_size)
    req = torch.arange(R, device=dev, dtype=torch.int32)
    tri = torch.where(valid, req[:, None], -1).reshape(-1)
    ctx = torch.zeros(max_reqs, dtype=torch.int32, device=dev)
    ctx[:R] = torch.where(valid_req, starts, 0).to(torch.int32)
    qsl = (torch.arange(max_reqs + 1, device=dev) * width).clamp(max=R * width).to(torch.int32)
    md = AttentionMetadata(slot_mapping=slots.reshape(-1), block_tables=block_tables,
                           context_lens=ctx, query_start_loc=qsl, token_req_idx=tri)
    return md, pos.reshape(-1)


class SpecChain:
    """The device state and the body of chained steps; owned by the model runner.

    buffers: the runner's InputBuffers (a chained step's inputs are prepared there);
    target_forward(T) -> hidden [T, H] over their first T rows; drafter: a PagedDrafter."""

    def __init__(self, k: int, buffers, target_forward: Callable[[int], torch.Tensor],
                 compute_logits: Callable[[torch.Tensor], torch.Tensor], drafter,
                 kv_cache: torch.Tensor, new_graph_runner, graph_sizes, use_graphs: bool,
                 ngram: Optional[tuple[int, int]] = None, max_model_len: int = 0,
                 staging: Optional[torch.Tensor] = None):
        self.k = k
        self.buffers = buffers
        self.target_forward = target_forward
        self.compute_logits = compute_logits
        self.drafter = drafter
        self.kv_cache = kv_cache
        # NWOR: the drafts' K/V go to these staging rows (request r's draft j -> r * k + j)
        # and only the accepted ones are committed to the cache, inside the step.
        self.staging = staging
        dev = buffers.device
        self.device = dev
        self.max_reqs = buffers.max_reqs
        self.max_rows = min(buffers.max_reqs, buffers.max_tokens // (k + 1))
        i64 = torch.int64
        # State of the last chained step, by its request rows.
        self.next_start = torch.zeros(self.max_reqs, dtype=i64, device=dev)
        self.next_tokens = torch.zeros(self.max_reqs, k + 1, dtype=i64, device=dev)
        # Host-prepared inputs of a step [R]: the row each request had in the previous step
        # (-1: it enters the chain, its tokens and start come from the host), host starts.
        self.src = torch.full((self.max_reqs,), -1, dtype=i64, device=dev)
        self.host_start = torch.zeros(self.max_reqs, dtype=i64, device=dev)
        self.out = torch.zeros(self.max_reqs, k + 1, dtype=i64, device=dev)
        # Per-row sampling parameters of a step with random requests [R] (greedy rows:
        # temperature 0; min_p 0 = off).
        self.temperature = torch.zeros(self.max_reqs, dtype=torch.float32, device=dev)
        self.min_p = torch.zeros(self.max_reqs, dtype=torch.float32, device=dev)
        self.rows: dict[str, int] = {}      # request -> its row in the last chained step
        # n-gram drafting on the device (ngram_device.py): each row's token history [W]
        # (W - 1 is a scratch column), the state's and the entering rows' (from the host).
        self.ngram = ngram
        if ngram is not None:
            self.hist_width = max_model_len + 2 * (k + 1) + 1
            self.hist = torch.zeros(self.max_reqs, self.hist_width, dtype=i64, device=dev)
            self.entry_hist = torch.zeros_like(self.hist)
        self.graphs = new_graph_runner([], name="spec chain")
        self.sample_graphs = new_graph_runner([], name="spec chain, sampling")
        if use_graphs:
            self._capture(new_graph_runner, graph_sizes)

    # ------------------------------------------------------------------ host side
    def padded_rows(self, R: int, sampling: bool) -> Optional[int]:
        """The captured size a step of R requests replays (None: none fits, run eagerly);
        sampling: the step holds random requests (step_samples)."""
        return (self.sample_graphs if sampling else self.graphs).padded_size(R)

    def host_inputs(self, reqs, rows: int, sampling: bool) -> list:
        """(device buffer view, host array) pairs of the step's src and host starts (and, for
        a sampling step, the rows' sampling parameters), padded to `rows`; checks that every
        request with unknown tokens was in the previous step."""
        src = np.full(rows, -1, dtype=np.int64)
        starts = np.zeros(rows, dtype=np.int64)
        prev = self.rows
        for i, r in enumerate(reqs):
            if r.token_ids[0] == UNKNOWN_TOKEN_ID:
                j = prev.get(r.req_id)
                if j is None:
                    raise RuntimeError(f"request {r.req_id} continues a chained step it was "
                                       "not in")
                src[i] = j
            else:
                starts[i] = r.start_pos
        if self.ngram is not None and any(r.history is not None for r in reqs):
            # entering rows' token histories: one copy, outside the graph, stream-ordered
            h = torch.zeros(rows, self.hist_width, dtype=torch.int64)
            for i, r in enumerate(reqs):
                if r.history is not None:
                    h[i, :len(r.history)] = torch.tensor(r.history, dtype=torch.int64)
            self.entry_hist[:rows].copy_(h.pin_memory() if self.device.type == "cuda" else h,
                                         non_blocking=True)
        out = [(self.src[:rows], src), (self.host_start[:rows], starts)]
        if sampling:
            temp = np.zeros(rows, dtype=np.float32)
            min_p = np.zeros(rows, dtype=np.float32)
            for i, r in enumerate(reqs):
                if not r.params.is_greedy:
                    temp[i], min_p[i] = r.params.temperature, r.params.min_p
            out += [(self.temperature[:rows], temp), (self.min_p[:rows], min_p)]
        return out

    def launch(self, reqs, rows: Optional[int], sampling: bool) -> torch.Tensor:
        """After the step's inputs were prepared (padded to `rows` requests when a graph is
        replayed, None: eagerly): runs the body. Returns out [R, k + 1] (device, -1 padded)."""
        R = len(reqs)
        graphs = self.sample_graphs if sampling else self.graphs
        if rows is not None:
            out = graphs.replay(rows)
        else:
            if graphs.graphs:
                log_once(logger, logging.WARNING, "spec-chain-no-graph",
                         "A chained speculative step of %d requests has no CUDA graph (largest "
                         "%d): it runs eagerly, far slower", R, max(graphs.graphs))
            out = self._body(R, sampling)
        self.rows = {r.req_id: i for i, r in enumerate(reqs)}
        return out[:R]

    def reset(self) -> None:
        """The chain broke: the next chained step starts from host inputs only."""
        self.rows = {}

    # ------------------------------------------------------------------ device side
    def _capture(self, new_graph_runner, graph_sizes) -> None:
        b = self.buffers
        b.slot_mapping.fill_(PADDING_SLOT_ID)
        b.token_req_idx.fill_(-1)
        self.src.fill_(-1)
        # every batch size up to max_rows gets a graph (an eager chained step costs a whole
        # eager target forward plus k eager drafter forwards)
        sizes = sorted(set(graph_sizes(self.max_rows)) | {self.max_rows})
        self.graphs = new_graph_runner(sizes, name="spec chain")
        self.sample_graphs = new_graph_runner(sizes, name="spec chain, sampling")
        with torch.inference_mode():
            self.graphs.capture(lambda R: self._body(R, False))
            self.sample_graphs.capture(lambda R: self._body(R, True))
        if not self.graphs.graphs:
            log_once(logger, logging.WARNING, "spec-chain-eager",
                     "Chained speculative steps run eagerly (no CUDA graph)")

    def _ngram_draft(self, am, start, n_acc, cont, gather, R: int) -> torch.Tensor:
        """The rows' histories gain this step's emitted tokens; the next drafts are looked up
        in them (ngram_device.py)."""
        k, K1, W = self.k, self.k + 1, self.hist_width
        hist = torch.where(cont[:, None], self.hist.index_select(0, gather),
                           self.entry_hist[:R])                              # [R, W]
        j = torch.arange(K1, device=self.device)
        at = torch.where(j[None, :] <= n_acc[:, None], start[:, None] + 1 + j[None, :], W - 1)
        hist.scatter_(1, at.clamp(max=W - 1), am)
        self.hist[:R].copy_(hist)
        n_min, n_max = self.ngram
        return ngram_propose_device(hist, start + n_acc + 2, n_min, n_max, k)

    def _body(self, R: int, sampling: bool = False) -> torch.Tensor:
        """One chained step over R request rows (padding rows have token_req_idx -1);
        sampling: some rows sample (their parameters in the per-row buffers)."""
        k, K1, b = self.k, self.k + 1, self.buffers
        T = R * K1
        valid_req = b.token_req_idx[:T].view(R, K1)[:, 0] >= 0
        src = self.src[:R]
        cont = src >= 0
        gather = src.clamp(min=0)
        # Gathers copy: the state rows are rewritten below without a hazard.
        start = torch.where(cont, self.next_start.index_select(0, gather), self.host_start[:R])
        ids = b.input_ids[:T].view(R, K1)
        ids.copy_(torch.where(cont[:, None], self.next_tokens.index_select(0, gather), ids))
        md, pos = chain_attention(b.block_tables, b.req_num_blocks, start, K1, valid_req,
                                  b.block_size, self.max_reqs)
        b.positions[:T].copy_(pos)
        slots = md.slot_mapping.view(R, K1)
        if self.staging is not None:
            draft_slots = slots[:, 1:].clone()                               # [R, k]
            rows = torch.arange(R * k, device=self.device).view(R, k)
            stage = torch.where(valid_req[:, None], rows, -1)
            b.stage_index[:T].view(R, K1).copy_(
                torch.cat([torch.full_like(stage[:, :1], -1), stage], 1))
            slots = torch.cat([slots[:, :1], torch.full_like(draft_slots, PADDING_SLOT_ID)], 1)
        b.slot_mapping[:T].copy_(slots.reshape(-1))
        b.context_lens.copy_(md.context_lens)
        hidden = self.target_forward(T)[:T]                                  # [T, H]
        logits = self.compute_logits(hidden)                                 # [T, V] fp32
        am = logits.argmax(dim=-1).view(R, K1)                               # [R, K1]
        drafts = ids[:, 1:].reshape(-1)                                      # [R * k]
        cu = torch.arange(1, R + 1, device=self.device, dtype=torch.int64) * k
        # (the kernels index flat contiguous tensors: no strided views)
        if sampling:
            out = self._verify_sampled(logits, am, drafts, cu, R)
        else:
            out = rejection_scan(cu, drafts, None, None, None, am[:, :k].reshape(-1),
                                 am[:, k].contiguous(), None, k)             # [R, K1]
        mask, n_acc, _ = scv_compute_mask(drafts, cu, out, k)
        if self.staging is not None:    # NWOR: commit the accepted drafts' staged K/V
            commit = torch.where(mask, draft_slots, PADDING_SLOT_ID).reshape(-1)
            commit_staged_kv(self.staging[:, :R * k], self.kv_cache, commit)
        n_acc = n_acc.long()
        # the tokens of positions start + 1 .. start + 1 + n_acc (rows past it: anything)
        emitted = torch.where(out >= 0, out, am)                             # [R, K1]
        bonus = emitted.gather(1, n_acc[:, None])[:, 0]
        if self.ngram is not None:
            nxt = self._ngram_draft(emitted, start, n_acc, cont, gather, R)
        else:
            nxt = self.drafter.chain_draft(hidden, emitted, start, n_acc, valid_req,
                                           b.block_tables, b.req_num_blocks,
                                           self.max_reqs)                   # [R, k]
        self.next_start[:R].copy_(start + n_acc + 1)
        self.next_tokens[:R, 0].copy_(bonus)
        self.next_tokens[:R, 1:].copy_(nxt)
        self.out[:R].copy_(out)
        return self.out[:R]

    def _verify_sampled(self, logits: torch.Tensor, am: torch.Tensor, drafts: torch.Tensor,
                        cu: torch.Tensor, R: int) -> torch.Tensor:
        """Rejection sampling of greedy drafts (q one-hot) against each row's target
        distribution p (temperature and min-p, whose off values are identities, so one graph
        serves every mix of rows): draft j is accepted with
        probability p_j(d_j); at the first rejection a token is drawn from p_j with d_j
        removed, after k acceptances the bonus from p_k. Greedy rows take the argmaxes.
        Random numbers come from the default generator (graph-safe)."""
        k, K1 = self.k, self.k + 1
        V = logits.shape[-1]
        rows = torch.arange(R, device=self.device).repeat_interleave(K1)     # [T]
        temp = self.temperature[:R]
        scaled = apply_temperature(logits, temp.index_select(0, rows))
        probs = apply_top_k_top_p_min_p(scaled, None, None,
                                        self.min_p[:R].index_select(0, rows)).softmax(-1)
        probs = probs.view(R, K1, V)
        d = drafts.view(R, k)
        p_d = probs[:, :k].gather(2, d[:, :, None])[:, :, 0]                # [R, k]
        u = torch.rand(R, k, device=self.device)
        residual = probs[:, :k].scatter(2, d[:, :, None], 0.0)              # [R, k, V]
        noise = torch.empty(R, K1, V, device=self.device).exponential_()
        noise.clamp_min_(torch.finfo(torch.float32).tiny)
        score = residual / noise[:, :k]
        score.scatter_(2, d[:, :, None], -1.0)      # never "recover" the rejected draft
        recovered = score.argmax(dim=-1)                                     # [R, k]
        bonus = (probs[:, k] / noise[:, k]).argmax(dim=-1)                   # [R]
        greedy = temp < _SAMPLING_EPS
        recovered = torch.where(greedy[:, None], am[:, :k], recovered)
        bonus = torch.where(greedy, am[:, k], bonus)
        return rejection_scan(cu, drafts, p_d.reshape(-1), None, u.reshape(-1),
                              recovered.reshape(-1), bonus, greedy, k)
