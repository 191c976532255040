"""DraftExit on its own: per-step write masks, kept-draft counts and the stopped count, against a
plain per-request loop over the same confidence flags and caps."""
import random

import pytest
import torch

from vllm.v1.spec_decode.early_exit import DraftExit


def _reference(oks: list[list[bool]], caps: list[int]):
    """oks[r][j]: request r's draft j is confident. -> (kept per request, write mask per step)."""
    steps = max(caps)
    kept = []
    for o, c in zip(oks, caps):
        n = 0
        while n < c and o[n]:
            n += 1
        kept.append(n)
    # step j (>= 1) writes K/V for request r iff its draft j - 1 was kept and draft j may be
    masks = [[j <= n and j < c for n, c in zip(kept, caps)] for j in range(1, steps)]
    return kept, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_ok", [True, False])
def test_matches_reference(seed, with_ok):
    rng = random.Random(seed)
    R = rng.choice([1, 3, 7])
    k = rng.choice([1, 2, 5])
    caps = [rng.randint(1, k) for _ in range(R)]
    if seed == 0:
        caps = [k] * R          # uniform caps: no cap tensor at all
    steps = max(caps)
    oks = [[rng.random() < 0.7 if with_ok else True for _ in range(steps)] for _ in range(R)]
    toks = [torch.tensor([100 * r + j for r in range(R)]) for j in range(steps)]
    ex = DraftExit(caps, torch.device("cpu"))
    assert ex.steps == steps
    masks = []
    for j in range(steps):
        ok = torch.tensor([oks[r][j] for r in range(R)]) if with_ok else None
        m = ex.observe(j, ok)
        if j + 1 < steps:
            masks.append([True] * R if m is None else m.tolist())
    drafts, stopped = ex.to_host(toks)
    kept, ref_masks = _reference(oks, caps)
    assert [len(d) for d in drafts] == kept
    assert drafts == [[100 * r + j for j in range(n)] for r, n in enumerate(kept)]
    assert masks == ref_masks
    assert stopped == sum(c - n for c, n in zip(caps, kept))
    if not with_ok:
        assert stopped == 0


def test_nothing_to_track_without_threshold_or_caps():
    ex = DraftExit([3, 3], torch.device("cpu"))
    assert ex.caps is None
    assert ex.observe(0, None) is None and ex.observe(1, None) is None
    drafts, stopped = ex.to_host([torch.tensor([1, 2])] * 3)
    assert drafts == [[1, 1, 1], [2, 2, 2]] and stopped == 0
