"""The incremental n-gram index proposes exactly what the whole-sequence lookup does, as the
sequence grows by one or several tokens per call, and costs far less per call."""
import random
import time

import numpy as np
from hypothesis import given, settings, strategies as st

from vllm.v1.spec_decode.ngram import NgramIndex, NgramProposer, ngram_propose
from vllm.v1.spec_decode.proposer import ProposeReq


@settings(max_examples=200, deadline=None)
@given(seq=st.lists(st.integers(0, 5), min_size=1, max_size=80),
       n_min=st.integers(1, 3), extra=st.integers(0, 2), k=st.integers(1, 6),
       steps=st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_index_equals_whole_sequence_lookup(seq, n_min, extra, k, steps):
    n_max = n_min + extra
    idx = NgramIndex(n_min, n_max)
    L = 1
    for step in steps + [len(seq)]:
        L = min(len(seq), L + step)
        idx.sync(seq[:L])
        assert idx.propose(k) == ngram_propose(np.asarray(seq[:L]), n_min, n_max, k)
        if L == len(seq):
            break


def test_index_restarts_when_the_sequence_is_not_an_extension():
    idx = NgramIndex(1, 2)
    idx.sync([1, 2, 3, 1, 2])
    assert idx.propose(2) == [3, 1]
    idx.sync([7, 8, 7])              # another sequence under the same id: rebuilt
    assert idx.propose(2) == ngram_propose(np.asarray([7, 8, 7]), 1, 2, 2) == [8, 7]


def test_proposer_state_is_dropped_and_the_lookup_is_cheap():
    rng = random.Random(0)
    base = [rng.randrange(50) for _ in range(400)]
    toks = base * 3
    p = NgramProposer(4, 1, 3)
    p.propose([ProposeReq("a", toks, len(toks) - 1, [0])])
    got, spent = [], 0.0
    for i in range(200):      # one new token per call, as in decoding
        toks.append(toks[len(toks) - len(base)])
        t0 = time.perf_counter()
        out = p.propose([ProposeReq("a", toks, len(toks) - 1, [0])])
        spent += time.perf_counter() - t0
        got.append((len(toks), out["a"]))
    per_call = spent / 200
    assert all(d == ngram_propose(np.asarray(toks[:n]), 1, 3, 4) for n, d in got)
    t0 = time.perf_counter()
    for _ in range(20):
        ngram_propose(np.asarray(toks), 1, 3, 4)
    full = (time.perf_counter() - t0) / 20
    assert per_call < full / 3      # the reference rescans ~1,400 tokens each call
    p.drop("a")
    assert "a" not in p.index
