"""N-gram prompt lookup on the device, for chained steps (chain.py): the same match rule as the
host lookup (ngram.py: the most recent earlier occurrence of the last n tokens that still has
k tokens after it, else the earliest occurrence; n from n_max down to n_min), vectorized over
requests and positions with static shapes, so it runs inside the chained step's CUDA graph.
A chained step verifies exactly k drafts per request: a lookup that finds fewer (or none) is
padded with the request's last token (verification rejects what does not match)."""
from __future__ import annotations

import torch


def ngram_propose_device(hist: torch.Tensor, lengths: torch.Tensor, n_min: int, n_max: int,
                         k: int) -> torch.Tensor:
    """hist [R, W] int64 token histories (row r valid in [0, lengths[r])), lengths [R] int64
    -> drafts [R, k] int64."""
    R, W = hist.shape
    dev = hist.device
    L = lengths.clamp(min=1)
    pos = torch.arange(W, device=dev)
    last = hist.gather(1, (L - 1)[:, None])                                   # [R, 1]
    found = torch.zeros(R, dtype=torch.bool, device=dev)
    start = torch.zeros(R, dtype=torch.int64, device=dev)     # first draft's index in hist
    big = torch.full((R, W), W, dtype=torch.int64, device=dev)
    for n in range(n_max, n_min - 1, -1):
        # windows i .. i + n - 1 over hist[:, :L - 1] (a match has a token after it)
        match = torch.ones(R, W, dtype=torch.bool, device=dev)
        for j in range(n):
            suf = hist.gather(1, (L - n + j).clamp(min=0)[:, None])         # [R, 1]
            col = torch.roll(hist, -j, dims=1)                                # hist[:, i + j]
            match &= col == suf
        ok = match & (pos[None, :] + n <= (L - 1)[:, None]) & (L >= n + 1)[:, None]
        recent = torch.where(ok & (pos[None, :] + n + k <= L[:, None]), pos[None, :], -1)
        best = recent.max(dim=1).values                                        # -1: none
        earliest = torch.where(ok, pos[None, :], big).min(dim=1).values       # W: none
        hit = ok.any(dim=1)
        s = torch.where(best >= 0, best, earliest) + n
        take = hit & ~found
        start = torch.where(take, s, start)
        found |= hit
    idx = start[:, None] + torch.arange(k, device=dev)[None, :]               # [R, k]
    have = found[:, None] & (idx < L[:, None])
    toks = hist.gather(1, idx.clamp(max=W - 1))
    return torch.where(have, toks, last)
