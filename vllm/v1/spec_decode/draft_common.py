"""Running a drafter (a separate draft model, or an EAGLE head) over its own paged KV cache.

The drafter's cache has the target's block layout (same block ids, same block size), so a
request's block table serves both; the scheduler's lookahead slots hold the drafter's K/V of
its own speculative tokens. Those K/V are overwritten next step: the drafter's `computed`
count only ever covers committed tokens (we do not apply NWOR to the drafter's own cache: its
writes are k tokens of a model far smaller than the target, and the next step needs the
accepted ones immediately, so staging would add a copy for little saving)."""
from __future__ import annotations

from typing import Optional

import torch

from vllm import envs
from vllm.forward_context import ForwardContext, set_forward_context
from vllm.sampling_params import SamplingParams
from vllm.v1.attention.kv_layout import allocate_kv_cache, kv_bytes_per_block
from vllm.v1.core.sched_output import ScheduledReq, SchedulerOutput
from vllm.v1.spec_decode.proposer import Proposer, ProposeReq, ProposerContext

_GREEDY = SamplingParams(temperature=0.0)

# (req_id, token_ids, start_pos, block_ids): one request's rows of a drafter forward
DraftItem = tuple[str, list[int], int, list[int]]


class DraftBatch:
    """Flattens (tokens, start position, block table) per request into the drafter's buffers."""

    def __init__(self, buffers):
        self.buffers = buffers      # the runner's InputBuffers, sized for the drafter

    def run(self, model, kv_cache: torch.Tensor, items: list[DraftItem], inputs_embeds_fn=None):
        """Returns (hidden [T, H], last_rows [R] indices of each request's last token)."""
        so = SchedulerOutput(reqs=[ScheduledReq(rid, toks, 0, start, blocks, True, _GREEDY,
                                                prompt_len=0)
                                   for rid, toks, start, blocks in items],
                             num_tokens=sum(len(t) for _, t, _, _ in items))
        inp = self.buffers.prepare(so, so.num_tokens, None)
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


class PagedDrafter(Proposer):
    """A drafter with its own paged KV cache, drafting k tokens greedily per request: one
    batched forward catches up on the tokens committed since its last call (`_catch_up`), then
    k - 1 single-token forwards extend each request (`_extend`).

    Subclasses set num_layers / kv_heads / head_dim (the drafter cache's geometry) and
    implement `_catch_up` and `_extend`."""

    num_layers: int
    kv_heads: int
    head_dim: int

    def __init__(self, ctx: ProposerContext):
        self.ctx = ctx
        self.config = ctx.config
        self.k = ctx.config.speculative_config.num_speculative_tokens
        self.device, self.dtype, self.block_size = ctx.device, ctx.dtype, ctx.block_size
        self.threshold = envs.get("VLLM_DRAFT_CONFIDENCE_THRESHOLD")
        self.computed: dict[str, int] = {}      # req -> tokens whose K/V the drafter has
        self.preemptions: dict[str, int] = {}   # req -> preemptions seen at its last call
        self.kv_cache: Optional[torch.Tensor] = None

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
        self.batch = DraftBatch(self.ctx.new_input_buffers(max_tokens, sc.max_num_seqs,
                                                           max_blocks))

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

    def _greedy(self, logits: torch.Tensor):
        return greedy_with_confidence(logits, self.threshold)

    def _catch_up(self, reqs: list[ProposeReq]):
        """-> (first drafts [R], their confidence ok [R] or None, state for _extend, and per
        request the position the first single-token forward writes)."""
        raise NotImplementedError

    def _extend(self, items: list[DraftItem], prev: torch.Tensor, state):
        """One single-token forward per request, fed the previous drafts prev [R] (on the
        device). -> (drafts [R], ok [R] or None, state)."""
        raise NotImplementedError

    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        tok, ok, state, pos = self._catch_up(reqs)
        toks, oks = [tok], [ok]
        for step in range(1, self.k):
            # the token ids are filled on the device from the previous step's argmax
            items = [(r.req_id, [0], p + step - 1, r.block_ids) for r, p in zip(reqs, pos)]
            tok, ok, state = self._extend(items, toks[-1], state)
            toks.append(tok)
            oks.append(ok)
        drafts = torch.stack(toks, 1).tolist()
        ok_host = torch.stack(oks, 1).tolist() if oks[0] is not None else None
        drafts = trim_at_low_confidence(drafts, ok_host)
        return {r.req_id: d for r, d in zip(reqs, drafts) if d}
