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

from vllm.forward_context import ForwardContext, set_forward_context
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched_output import ScheduledReq, SchedulerOutput
from vllm.v1.worker.input_batch import InputBuffers

_GREEDY = SamplingParams(temperature=0.0)


class DraftBatch:
    """Flattens (tokens, start position, block table) per request into the drafter's buffers."""

    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, block_size: int,
                 device: torch.device):
        self.buffers = InputBuffers(max_tokens, max_reqs, max_blocks, block_size, device)

    def run(self, model, kv_cache: torch.Tensor, items: list[tuple[str, list[int], int, list[int]]],
            inputs_embeds_fn=None):
        """items: (req_id, token_ids, start_pos, block_ids). Returns (hidden [T, H],
        last_rows [R] indices of each request's last token, step inputs)."""
        so = SchedulerOutput(reqs=[ScheduledReq(rid, toks, 0, start, blocks, True, _GREEDY,
                                                prompt_len=0)
                                   for rid, toks, start, blocks in items],
                             num_tokens=sum(len(t) for _, t, _, _ in items))
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
