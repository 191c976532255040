"""Running a drafter (a separate draft model, or an EAGLE head) over its own paged KV cache.

The drafter's cache has the target's block layout (same block ids, same block size), so a
request's block table serves both; the scheduler's lookahead slots hold the drafter's K/V of
its own speculative tokens. Those K/V are overwritten next step: the drafter's `computed`
count only ever covers committed tokens (we do not apply NWOR to the drafter's own cache: its
writes are k tokens of a model far smaller than the target, and the next step needs the
accepted ones immediately, so staging would add a copy for little saving).

On CUDA the drafter's forward replays CUDA graphs (one per token count, from the runner's graph
runner passed in the ProposerContext) over the persistent buffers of DraftBatch; batches larger
than every captured size run eagerly (VLLM_DRAFT_CUDA_GRAPHS=0 or enforce_eager: all of them)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from vllm import envs
from vllm.logger import init_logger, log_once
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.sampling_params import SamplingParams
from vllm.v1.attention.kv_layout import allocate_kv_cache, kv_bytes_per_block
from vllm.v1.core.sched_output import ScheduledReq, SchedulerOutput
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.spec_decode.chain import chain_attention
from vllm.v1.spec_decode.early_exit import DraftExit
from vllm.v1.spec_decode.proposer import Proposer, ProposeReq, ProposerContext

logger = init_logger(__name__)

_GREEDY = SamplingParams(temperature=0.0)

# (req_id, token_ids, start_pos, block_ids): one request's rows of a drafter forward
DraftItem = tuple[str, list[int], int, list[int]]

# Largest drafter batch (tokens) replayed from a CUDA graph; larger catch-ups run eagerly.
MAX_DRAFT_GRAPH_TOKENS = 512

# forward(input_ids [T], positions [T], T) -> hidden [T, H], over the first T buffer rows.
DraftForward = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def draft_graphs_wanted(config, device: torch.device) -> bool:
    return (device.type == "cuda" and not config.enforce_eager
            and bool(envs.get("VLLM_DRAFT_CUDA_GRAPHS")))


class DraftBatch:
    """Flattens (tokens, start position, block table) per request into the drafter's buffers."""

    # A stand-in for the context's new_graph_runner, same signature (tests: a runner that
    # replays eagerly on the CPU); None: the context's.
    graph_runner_cls: Optional[Callable[..., Any]] = None

    def __init__(self, buffers, new_graph_runner: Callable[..., Any],
                 graph_sizes: Callable[[int], list[int]], hidden_size: int = 0,
                 dtype: Optional[torch.dtype] = None):
        self.buffers = buffers      # the runner's InputBuffers, sized for the drafter
        self._new_graph_runner = self.graph_runner_cls or new_graph_runner
        self._graph_sizes = graph_sizes
        self.graphs = self._new_graph_runner([], name="draft")     # none captured: eager
        device, max_reqs = buffers.device, buffers.max_reqs
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
            rows = min(buffers.max_tokens, MAX_DRAFT_GRAPH_TOKENS)
            self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device)

    @staticmethod
    def _sched(items: list[DraftItem]) -> SchedulerOutput:
        return SchedulerOutput(reqs=[ScheduledReq(rid, toks, 0, start, blocks, True, _GREEDY,
                                                  prompt_len=0)
                                     for rid, toks, start, blocks in items],
                               num_tokens=sum(len(t) for _, t, _, _ in items))

    def capture(self, forward: DraftForward, kv_cache: torch.Tensor, max_graph_tokens: int) -> None:
        """CUDA graphs of ``forward`` over the first T rows of the persistent buffers, one per
        token count T up to max_graph_tokens (a per-token drafting step has T = number of
        requests; a catch-up T = the tokens committed since the last call). Capture failure:
        logged once by the graph runner, and every call runs eagerly."""
        bufs = self.buffers
        # Capture-time forwards must write nothing into the drafter's cache: fresh buffers hold
        # the padding slot and request id -1 everywhere; make sure of it.
        bufs.slot_mapping.fill_(PADDING_SLOT_ID)
        bufs.token_req_idx.fill_(-1)

        def run_forward(T: int) -> torch.Tensor:
            with set_forward_context(ForwardContext(bufs.attn_view(T), kv_cache)):
                return forward(bufs.input_ids[:T], bufs.positions[:T], T)

        limit = min(max_graph_tokens, bufs.max_tokens, MAX_DRAFT_GRAPH_TOKENS)
        self.graphs = self._new_graph_runner(self._graph_sizes(limit), name="draft")
        with torch.inference_mode():
            self.graphs.capture(run_forward)

    def _mask_slots(self, alive: Optional[torch.Tensor]) -> None:
        """alive [R] bool (one token per request): rows of stopped requests write no K/V.
        In place on the persistent slot buffer, so graphs replay unchanged."""
        if alive is not None:
            self.buffers.slot_mapping[:alive.shape[0]].masked_fill_(~alive, PADDING_SLOT_ID)

    def run_graph(self, kv_cache: torch.Tensor, items: list[DraftItem],
                  input_ids: Optional[torch.Tensor] = None,
                  hidden: Optional[torch.Tensor] = None,
                  alive: Optional[torch.Tensor] = None):
        """Like run, from a captured graph. input_ids [T] (device) replaces the items' token ids
        (drafting steps feed the previous argmax without a host round trip); hidden [T, H]
        fills the EAGLE hidden-state input; alive [R] bool (a one-token-per-request step): the
        requests still drafting (the others write no K/V). Returns None when no graph fits
        (run eagerly)."""
        self._next = None
        T = sum(len(t) for _, t, _, _ in items)
        Tp = self.graphs.padded_size(T)
        if Tp is None:
            return None
        inp = self.buffers.prepare(self._sched(items), Tp, None)
        self._mask_slots(alive)
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
        return self.graphs.replay(Tp)[:T], inp.logits_indices

    def run_graph_next(self, input_ids: torch.Tensor, hidden: Optional[torch.Tensor] = None,
                       alive: Optional[torch.Tensor] = None):
        """The drafting step after a one-token-per-request run_graph (or run_graph_next): every
        request's single token moves one position on, so positions, context lengths and cache
        slots advance on the device — no host preparation, no host-to-device copy, no sync.
        input_ids [R] (device): the previous argmax; hidden [R, H]: EAGLE's features; alive [R]
        bool: the requests still drafting (the others' slots are PADDING_SLOT_ID). Returns
        hidden [R, H] (row r = request r's token), or None (no such previous step: run_graph)."""
        if self._next is None:
            return None
        R, Tp = self._next
        b, bs = self.buffers, self.buffers.block_size
        pos = b.positions[:R]
        pos += 1
        b.context_lens[:R] += 1
        blk_idx = pos // bs
        blk = b.block_tables[:R].gather(
            1, blk_idx.clamp(max=b.max_blocks - 1).unsqueeze(1)).squeeze(1).long()
        # A position past the request's allocated blocks writes nowhere (as prepare does).
        writes = blk_idx < self._nblk[:R]
        if alive is not None:
            writes &= alive
        b.slot_mapping[:R] = torch.where(writes, blk * bs + pos % bs, PADDING_SLOT_ID)
        b.input_ids[:R].copy_(input_ids)
        if hidden is not None:
            self.hidden[:R].copy_(hidden)
        return self.graphs.replay(Tp)[:R]

    def run(self, model, kv_cache: torch.Tensor, items: list[DraftItem], inputs_embeds_fn=None,
            alive: Optional[torch.Tensor] = None):
        """Eagerly. Returns (hidden [T, H], last_rows [R] indices of each request's last token).
        alive: as in run_graph."""
        self._next = None
        so = self._sched(items)
        inp = self.buffers.prepare(so, so.num_tokens, None)
        self._mask_slots(alive)
        ctx = ForwardContext(inp.attn, kv_cache)
        with set_forward_context(ctx):
            embeds = inputs_embeds_fn(inp) if inputs_embeds_fn is not None else None
            hidden = model(inp.input_ids, inp.positions, inputs_embeds=embeds)
        return hidden, inp.logits_indices


def greedy_with_confidence(logits: torch.Tensor, threshold: float):
    """argmax token per row and whether its probability clears the early-exit threshold."""
    tok = logits.argmax(dim=-1)
    if threshold <= 0:
        return tok, None
    conf = torch.softmax(logits, dim=-1).gather(1, tok[:, None])[:, 0]
    return tok, conf >= threshold


class PagedDrafter(Proposer):
    """A drafter with its own paged KV cache, drafting up to k tokens greedily per request:
    one batched forward catches up on the tokens committed since its last call, then
    single-token forwards extend each request, as many as the largest per-request cap
    (ProposeReq.max_drafts) allows. Each forward replays a CUDA graph when one fits (from the
    second single-token step on, with positions and slots advanced on the device), else runs
    eagerly. A request stops at its cap or at its first draft below the confidence threshold
    (DraftExit, on the device): its later steps write no K/V and their drafts are dropped.

    Subclasses set num_layers / kv_heads / head_dim (the drafter cache's geometry) and
    hidden_input_size (EAGLE: the target's hidden size, fed as features with every token; 0:
    none), and implement `_catch_up`, `_run_eager`, `_compute_logits` and `_graph_forward`."""

    num_layers: int
    kv_heads: int
    head_dim: int
    hidden_input_size: int = 0

    def __init__(self, ctx: ProposerContext):
        self.ctx = ctx
        self.config = ctx.config
        self.k = ctx.config.speculative_config.num_speculative_tokens
        self.device, self.dtype, self.block_size = ctx.device, ctx.dtype, ctx.block_size
        self.threshold = ctx.config.speculative_config.confidence_threshold
        self.computed: dict[str, int] = {}      # req -> tokens whose K/V the drafter has
        self.preemptions: dict[str, int] = {}   # req -> preemptions seen at its last call
        self.kv_cache: Optional[torch.Tensor] = None
        self.stopped_tokens = 0     # drafts not made because of the confidence exit (running)

    def kv_bytes_per_block(self) -> int:
        return kv_bytes_per_block(self.num_layers, self.block_size, self.kv_heads,
                                  self.head_dim, self.dtype)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.kv_cache = allocate_kv_cache(self.num_layers, num_blocks, self.block_size,
                                          self.kv_heads, self.head_dim, self.dtype, self.device)
        sc = self.config.scheduler_config
        max_blocks = (sc.max_model_len + self.k + self.block_size - 1) // self.block_size + 1
        # catch-up batches can hold whole prompts (after a prefill or a preemption)
        max_tokens = min(sc.max_num_seqs * (sc.max_model_len + 1), 1 << 20)
        self.batch = DraftBatch(
            self.ctx.new_input_buffers(max_tokens, sc.max_num_seqs, max_blocks),
            self.ctx.new_graph_runner, self.ctx.graph_sizes,
            hidden_size=self.hidden_input_size, dtype=self.dtype)
        forward = self._graph_forward()
        if forward is not None:
            # per-token steps hold one token per request, small catch-ups up to 1 + k
            self.batch.capture(forward, self.kv_cache, sc.max_num_seqs * (self.k + 1))
            self._warm_up_eager(min(max_tokens, sc.max_num_batched_tokens))

    def _warm_up_eager(self, max_tokens: int) -> None:
        """Catch-ups larger than every captured graph (a burst of new prompts) run eagerly:
        run two such forwards now (token counts that are and are not multiples of 16, the
        two cases Triton specializes integer arguments on), so their kernels are compiled at
        start-up rather than in the middle of serving. They write nothing: the request has
        no blocks, so every slot is the padding slot."""
        top = max(self.batch.graphs.sizes, default=0)
        hid = self.hidden_input_size
        try:
            for T in (top + 16, top + 17):
                if T > max_tokens:
                    continue
                hidden = (torch.zeros(T, hid, dtype=self.dtype, device=self.device)
                          if hid else None)
                with torch.inference_mode():
                    self._run_eager([("__warmup__", [0] * T, 0, [])], None, hidden)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as e:  # only a warm-up: serving compiles on first use instead
            log_once(logger, logging.WARNING, "drafter-warm-up",
                     "Drafter eager warm-up failed (%s: %s); its kernels compile on first use",
                     type(e).__name__, e)

    def drop(self, req_id: str) -> None:
        self.computed.pop(req_id, None)
        self.preemptions.pop(req_id, None)

    def _resume(self, r: ProposeReq, cached_after: int) -> int:
        """Tokens of r whose K/V the drafter's cache still holds; records that it will hold
        `cached_after` once this call's catch-up forward has run."""
        c = self.computed.get(r.req_id, 0)
        if self.preemptions.get(r.req_id, 0) != r.num_preemptions:
            c = 0       # blocks were freed and reallocated: the drafter's K/V are gone
        self.preemptions[r.req_id] = r.num_preemptions
        self.computed[r.req_id] = cached_after
        return c

    def _catch_up(self, reqs: list[ProposeReq]):
        """-> (items of the catch-up forward, their hidden-state input [T, H] or None, and per
        request the position the first single-token forward writes)."""
        raise NotImplementedError

    def _run_eager(self, items: list[DraftItem], tokens: Optional[torch.Tensor],
                   hidden: Optional[torch.Tensor], alive: Optional[torch.Tensor] = None):
        """The forward without graphs -> (hidden [T, H], last rows [R]); tokens [T] (device),
        when given, replace the items' token ids; hidden [T, H]: the features input; alive [R]
        bool: the requests still drafting (DraftBatch.run)."""
        raise NotImplementedError

    def _compute_logits(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _graph_forward(self) -> Optional[DraftForward]:
        """The forward to capture as CUDA graphs over DraftBatch's persistent inputs, or None
        (graphs off: every forward runs eagerly)."""
        raise NotImplementedError

    # ---- chained steps (spec_decode/chain.py) ---------------------------------------------
    # Position of the drafter cache entry a catch-up row of input j writes: start + offset + j
    # (EAGLE 0: the entry at p pairs the target's hidden state at p with the token at p + 1;
    # a draft model 1: the entry at p is the token at p).
    chain_position_offset: int = 0

    def chain_forward(self, ids: torch.Tensor, positions: torch.Tensor,
                      feats: torch.Tensor) -> torch.Tensor:
        """ids/positions [T], feats [T, H] (the target's hidden states, or the drafter's own
        features on single-token steps; a draft model ignores them) -> features [T, H]. Runs
        inside the caller's forward context."""
        raise NotImplementedError

    def chain_draft(self, hidden: torch.Tensor, am: torch.Tensor, start: torch.Tensor,
                    n_acc: torch.Tensor, valid_req: torch.Tensor, block_tables: torch.Tensor,
                    num_blocks: torch.Tensor, max_reqs: int) -> torch.Tensor:
        """A chained step's drafting, on the device with static shapes: hidden [R * (k + 1), H]
        target hidden states, am [R, k + 1] the tokens after each input (the emitted ones up
        to the bonus; rows past it hold anything), start [R] the step's
        start positions, n_acc [R] accepted drafts, valid_req [R] (False: padding row).
        Returns the next drafts [R, k]: a catch-up over all k + 1 rows (row n_acc kept), then
        k - 1 single-token steps."""
        R, K1 = am.shape
        bs, off = self.block_size, self.chain_position_offset
        md, pos = chain_attention(block_tables, num_blocks, start + off, K1, valid_req, bs,
                                  max_reqs)
        with set_forward_context(ForwardContext(md, self.kv_cache)):
            feats = self.chain_forward(am.reshape(-1), pos, hidden)              # [T, H]
        H = feats.shape[-1]
        f = feats.view(R, K1, H).gather(1, n_acc.view(R, 1, 1).expand(R, 1, H))[:, 0]
        tok = self._compute_logits(f).argmax(dim=-1)
        toks = [tok]
        first = start + off + n_acc + 1
        for i in range(1, self.k):
            md, pos = chain_attention(block_tables, num_blocks, first + (i - 1), 1, valid_req,
                                      bs, max_reqs)
            with set_forward_context(ForwardContext(md, self.kv_cache)):
                f = self.chain_forward(tok, pos, f)
            tok = self._compute_logits(f).argmax(dim=-1)
            toks.append(tok)
        return torch.stack(toks, 1)

    def chain_exit(self, req_id: str, num_tokens: int) -> None:
        """The request left a chain with num_tokens tokens (the last one's target K/V not yet
        computed): the drafter's cache holds valid entries below num_tokens - 1 + offset."""
        self.computed[req_id] = num_tokens - 1 + self.chain_position_offset

    def _features(self, items: list[DraftItem], tokens: Optional[torch.Tensor] = None,
                  hidden: Optional[torch.Tensor] = None,
                  alive: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Each request's last-token output [R, H]: from a CUDA graph when one fits, else
        eagerly."""
        out = self.batch.run_graph(self.kv_cache, items, input_ids=tokens, hidden=hidden,
                                   alive=alive)
        if out is None:
            out = self._run_eager(items, tokens, hidden, alive)
        return out[0][out[1]]

    def _draft(self, feats: torch.Tensor):
        """-> (drafts [R], ok [R] or None, the features input of the next step or None)."""
        tok, ok = greedy_with_confidence(self._compute_logits(feats), self.threshold)
        return tok, ok, (feats if self.hidden_input_size else None)

    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        caps = [self.k if r.max_drafts is None else max(0, min(r.max_drafts, self.k))
                for r in reqs]
        # A request capped at 0 stays out of the forwards; its committed tokens are caught up
        # at its next call (the drafter's `computed` count is left as it was).
        reqs = [r for r, c in zip(reqs, caps) if c > 0]
        caps = [c for c in caps if c > 0]
        if not reqs:
            return {}
        ex = DraftExit(caps, self.device)
        items, hidden, pos = self._catch_up(reqs)
        tok, ok, state = self._draft(self._features(items, hidden=hidden))
        toks = [tok]
        alive = ex.observe(0, ok)
        for step in range(1, ex.steps):
            # the token ids are filled on the device from the previous step's argmax; from the
            # second drafting step on, positions and slots advance on the device too. (The
            # replay's output buffer is overwritten only by the next replay, after state has
            # been copied into the persistent input.) Stopped requests (alive False) still
            # run, writing nowhere, so the batch keeps its shape.
            feats = self.batch.run_graph_next(tok, state, alive) if step > 1 else None
            if feats is None:
                items = [(r.req_id, [0], p + step - 1, r.block_ids) for r, p in zip(reqs, pos)]
                feats = self._features(items, tokens=tok, hidden=state, alive=alive)
            tok, ok, state = self._draft(feats)
            toks.append(tok)
            alive = ex.observe(step, ok)
        drafts, stopped = ex.to_host(toks)
        self.stopped_tokens += stopped
        return {r.req_id: d for r, d in zip(reqs, drafts) if d}
