"""N-gram prompt lookup: draft the tokens that followed the most recent earlier occurrence of
the sequence's last n tokens (n from prompt_lookup_max down to prompt_lookup_min).

The proposer keeps, per request, an index of where every n-gram starts (NgramIndex), updated
with the tokens committed since its last call only: the lookup is on the host on the critical
path of every speculative step, and rescanning the whole sequence (`ngram_propose`, kept as the
reference) cost ~90 us per request per step."""
from __future__ import annotations

from bisect import bisect_right

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


class NgramIndex:
    """Start positions of the n-grams (n_min <= n <= n_max) of one growing token sequence;
    proposes exactly what ngram_propose does on the whole sequence."""

    def __init__(self, n_min: int, n_max: int):
        self.n_min, self.n_max = n_min, n_max
        self.tokens: list[int] = []
        # n -> n-gram -> its start positions, ascending
        self.starts: dict[int, dict[tuple, list[int]]] = {n: {} for n in range(n_min, n_max + 1)}

    def sync(self, tokens: list[int]) -> None:
        """tokens: the whole sequence, which only ever grows (committed tokens)."""
        old = len(self.tokens)
        if len(tokens) < old or (old and tokens[old - 1] != self.tokens[-1]):
            self.__init__(self.n_min, self.n_max)       # not an extension: start over
            old = 0
        t = self.tokens
        t.extend(tokens[old:])
        L = len(t)
        for n, idx in self.starts.items():
            for i in range(max(0, old - n + 1), L - n + 1):
                key = tuple(t[i:i + n])
                hits = idx.get(key)
                if hits is None:
                    idx[key] = [i]
                else:
                    hits.append(i)

    def propose(self, k: int) -> list[int]:
        t = self.tokens
        L = len(t)
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            hits = self.starts[n].get(tuple(t[L - n:]))
            if not hits:
                continue
            hi = bisect_right(hits, L - 1 - n)      # a match has a token after it
            if hi == 0:
                continue
            # the most recent match with k tokens after it, else the earliest
            j = bisect_right(hits, L - n - k, 0, hi)
            start = (hits[j - 1] if j else hits[0]) + n
            return t[start:start + k]
        return []


class NgramProposer(Proposer):
    def __init__(self, k: int, n_min: int, n_max: int, always_draft: bool = False):
        # always_draft: every request gets its cap of drafts (k, or max_drafts) each step,
        # padded with its last token, so verify windows are full: chained steps (chain.py)
        # verify exactly k drafts; benchmarks with a controlled acceptance rate need them.
        self.k, self.n_min, self.n_max = k, n_min, n_max
        self.always_draft = always_draft
        self.index: dict[str, NgramIndex] = {}

    def drop(self, req_id: str) -> None:
        self.index.pop(req_id, None)

    def propose(self, reqs: list[ProposeReq]) -> dict[str, list[int]]:
        out = {}
        for r in reqs:
            cap = self.k if r.max_drafts is None else max(0, min(r.max_drafts, self.k))
            if cap == 0:
                continue
            # the match is chosen for k drafts whatever the cap, then truncated
            idx = self.index.get(r.req_id)
            if idx is None:
                idx = self.index[r.req_id] = NgramIndex(self.n_min, self.n_max)
            idx.sync(r.token_ids)
            d = idx.propose(self.k)[:cap]
            if self.always_draft and len(d) < cap:
                d = d + [r.token_ids[-1]] * (cap - len(d))
            if d:
                out[r.req_id] = d
        return out
