"""N-gram prompt lookup: draft the tokens that followed the most recent earlier occurrence of
the sequence's last n tokens (n from prompt_lookup_max down to prompt_lookup_min)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from vllm.v1.spec_decode.proposer import Proposer, ProposeReq


def ngram_propose(tokens: np.ndarray, n_min: int, n_max: int, k: int) -> list[int]:
    """tokens [L] int: the whole sequence. Vectorized over positions; no per-token loop."""
    L = tokens.shape[0]
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        suffix = tokens[L - n:]
        # windows over tokens[:-1] so a match always has at least one token after it
        win = sliding_window_view(tokens[:L - 1], n)
        hits = np.flatnonzero((win == suffix).all(axis=1))
        if hits.size:
            # The most recent match that still has k tokens after it; failing that, the
            # earliest match (the longest continuation available).
            full = hits[hits + n + k <= L]
            start = int(full[-1] if full.size else hits[0]) + n
            return tokens[start:start + k].tolist()
    return []


class NgramProposer(Proposer):
    def __init__(self, k: int, n_min: int, n_max: int, always_draft: bool = False):
        # always_draft: benchmark-only (controlled acceptance on dummy weights): every request
        # gets its cap of drafts (k, or max_drafts) each step, padded with its last token, so
        # verify windows are full.
        self.k, self.n_min, self.n_max = k, n_min, n_max
        self.always_draft = always_draft

    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        out = {}
        for r in reqs:
            cap = self.k if r.max_drafts is None else max(0, min(r.max_drafts, self.k))
            if cap == 0:
                continue
            # the match is chosen for k drafts whatever the cap, then truncated
            d = ngram_propose(np.asarray(r.token_ids, dtype=np.int64), self.n_min, self.n_max,
                              self.k)[:cap]
            if self.always_draft and len(d) < cap:
                d = d + [r.token_ids[-1]] * (cap - len(d))
            if d:
                out[r.req_id] = d
        return out
