"""The device n-gram lookup of chained steps equals the host lookup (ngram_propose), padded
with the last token to k drafts, on random and repetitive sequences of odd lengths."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vllm.v1.spec_decode.ngram import ngram_propose
from vllm.v1.spec_decode.ngram_device import ngram_propose_device


def _host(tokens, n_min, n_max, k):
    d = ngram_propose(np.asarray(tokens, dtype=np.int64), n_min, n_max, k)
    return d + [tokens[-1]] * (k - len(d))


def _check(seqs, n_min, n_max, k, width):
    hist = torch.zeros(len(seqs), width, dtype=torch.int64)
    for i, s in enumerate(seqs):
        hist[i, :len(s)] = torch.tensor(s)
        hist[i, len(s):] = 999          # stale tokens past a row's length must not match
    lengths = torch.tensor([len(s) for s in seqs])
    got = ngram_propose_device(hist, lengths, n_min, n_max, k).tolist()
    want = [_host(s, n_min, n_max, k) for s in seqs]
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=40), min_size=1, max_size=6),
       st.integers(1, 3), st.integers(0, 2), st.integers(1, 5), st.integers(0, 7))
def test_matches_the_host_lookup(seqs, n_min, extra, k, pad):
    n_max = n_min + extra
    _check(seqs, n_min, n_max, k, max(len(s) for s in seqs) + pad + 1)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_repetitive_text(k):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 50, 13).tolist()
    seqs = [base * 3 + base[:5], base + [7, 7, 7, 7], [3], [3, 3], base[:4] * 5]
    _check(seqs, 1, 3, k, 60)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(1)
    hist = torch.from_numpy(rng.integers(0, 4, (37, 301))).long()
    lengths = torch.from_numpy(rng.integers(1, 301, 37)).long()
    cpu = ngram_propose_device(hist, lengths, 1, 4, 5)
    gpu = ngram_propose_device(hist.cuda(), lengths.cuda(), 1, 4, 5).cpu()
    assert torch.equal(cpu, gpu)
