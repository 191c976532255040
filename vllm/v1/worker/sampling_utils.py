"""Small sampling helpers of the runner: min_tokens masking and logprobs of emitted tokens."""
from __future__ import annotations

import torch

from vllm.platform import to_device_async
from vllm.v1.core.sched_output import ScheduledReq


def mask_min_tokens(logits: torch.Tensor, reqs: list[ScheduledReq]) -> None:
    """Forbid EOS / stop tokens for rows whose request has not reached min_tokens (in place).
    One index_put with indices copied from pinned memory: no host sync."""
    rows: list[int] = []
    cols: list[int] = []
    for row, r in enumerate(reqs):
        p = r.params
        if p.min_tokens and r.num_output_tokens < p.min_tokens:
            ids = list(p.stop_token_ids or [])
            if r.eos_token_id is not None and not p.ignore_eos:
                ids.append(r.eos_token_id)
            rows.extend([row] * len(ids))
            cols.extend(ids)
    if not rows:
        return
    idx = to_device_async(torch.tensor([rows, cols], dtype=torch.int64), logits.device)
    logits.index_put_((idx[0], idx[1]), logits.new_full((), float("-inf")))


def gather_logprobs(logits: torch.Tensor, reqs: list[ScheduledReq], first_row: list[int],
                    sampled: list[list[int]]) -> list:
    """Per request: for each emitted token, {token: logprob} with the top-k of the model's
    distribution (raw logits) plus the emitted token itself."""
    out = []
    lp = torch.log_softmax(logits, dim=-1)
    for i, r in enumerate(reqs):
        k = r.params.logprobs
        if k is None or first_row[i] < 0 or not sampled[i]:
            out.append(None)
            continue
        rows = lp[first_row[i]:first_row[i] + len(sampled[i])]
        toks = torch.tensor(sampled[i], device=lp.device)
        chosen = rows.gather(1, toks[:, None])[:, 0].tolist()
        top_v, top_i = (rows.topk(k, dim=-1) if k > 0 else (rows[:, :0], rows[:, :0].long()))
        entries = []
        for j, tok in enumerate(sampled[i]):
            d = dict(zip(top_i[j].tolist(), top_v[j].tolist()))
            d[tok] = chosen[j]
            entries.append(d)
        out.append(entries)
    return out
