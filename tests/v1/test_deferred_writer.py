"""SCV (the acceptance mask) and its NWOR commit-slot helper: every mode against the host
baseline, out-of-bounds and invalid shapes (seed 002), CUDA graphs and sync-freedom on GPU."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must precede the first import of a vllm kernel module (read at @triton.jit time).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import vllm.v1.spec_decode.scv as scv  # noqa: E402
from vllm.v1.constants import PLACEHOLDER_TOKEN_ID  # noqa: E402
from vllm.v1.spec_decode.nwor_commit import (acceptance_to_commit_slots,  # noqa: E402
                                             acceptance_to_commit_slots_ref)
from vllm.v1.spec_decode.scv import (ScvVerifier, resolve_scv_mode,  # noqa: E402
                                     scv_compute_mask, scv_compute_mask_host,
                                     scv_compute_mask_ref)

P = PLACEHOLDER_TOKEN_ID
MODES = ("off", "vectorized", "graph", "adaptive")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def triton_ok(device: str = DEVICE) -> bool:
    """Whether the Triton kernel can be launched on `device`'s tensors (CPU: interpreter)."""
    if device == "cuda":
        return torch.cuda.is_available()
    return type(scv._scv_compute_mask_kernel).__name__ == "InterpretedFunction"


needs_triton = pytest.mark.skipif(not triton_ok(), reason="triton interpreter unavailable")

# The seed-002 robustness tests run on both: the original failure was a device-side assert,
# which only a CUDA run can show (the `cuda` variants skip without a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_batch(gen: torch.Generator, num_reqs: int, max_k: int, vocab: int = 6,
               cols: int | None = None, device: str = DEVICE):
    """A ragged batch shaped like the rejection sampler's output: per request an accepted
    prefix of its drafts, then a recovered token (!= the draft) or the bonus, then -1s."""
    ks = torch.randint(0, max_k + 1, (num_reqs,), generator=gen).tolist()
    drafts, rows = [], []
    for k in ks:
        d = torch.randint(0, vocab, (k,), generator=gen).tolist()
        n_acc = int(torch.randint(0, k + 1, (1,), generator=gen))
        row = d[:n_acc]
        if n_acc < k:
            row.append((d[n_acc] + 1 + int(torch.randint(0, vocab - 1, (1,), generator=gen)))
                       % vocab)
        else:
            row.append(int(torch.randint(0, vocab, (1,), generator=gen)))
        rows.append(row + [P] * (max_k + 1 - len(row)))
        drafts += d
    sampled = torch.tensor(rows, dtype=torch.int64).reshape(num_reqs, max_k + 1)
    if cols is not None:
        sampled = sampled[:, :cols].contiguous()
    cu = torch.tensor(ks, dtype=torch.int64).cumsum(0).to(torch.int32)
    return (torch.tensor(drafts, dtype=torch.int64, device=device), cu.to(device),
            sampled.to(device), ks)


def compute_acceptance(draft, cu, sampled, mode, **kw):
    """The acceptance mask computed by a fresh verifier in `mode` (no graphs shared between
    calls: each comparison runs exactly the path it names)."""
    return ScvVerifier(mode, sampled.device).compute(draft, cu, sampled, **kw)


def assert_same(a, b, msg=""):
    assert torch.equal(a.accepted_mask.cpu(), b.accepted_mask.cpu()), msg
    assert torch.equal(a.num_accepted.cpu(), b.num_accepted.cpu()), msg
    assert torch.equal(a.bonus_index.cpu(), b.bonus_index.cpu()), msg
    assert torch.equal(a.valid_lengths.cpu(), b.valid_lengths.cpu()), msg


# ---- the seed-002 robustness tests --------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_scv_mask_handles_oob_gracefully(mode, device):
    # Request 0 has 4 drafts but the sampled row has only 2 columns: positions >= 2 are out of
    # bounds and must be masked (no device assert, no OOB read), never accepted.
    draft = torch.tensor([5, 6, 7, 8, 1, 2, 3], device=device)
    cu = torch.tensor([4, 7], dtype=torch.int32, device=device)
    sampled = torch.tensor([[5, 6], [1, 9]], device=device)
    v = ScvVerifier(mode, device, max_num_reqs=4, max_spec_len=4, adaptive_capture_after=1)
    res = v.compute(draft, cu, sampled, num_draft_tokens=[4, 3])
    assert res.accepted_mask.shape == (2, 4)
    assert res.accepted_mask.cpu().tolist() == [[True, True, False, False],
                                                [True, False, False, False]]
    assert res.num_accepted.cpu().tolist() == [2, 1]
    assert res.bonus_index.cpu().tolist() == [2, 1]
    assert res.valid_lengths.cpu().tolist() == [2, 2]   # no room for request 0's next token
    assert v.fallbacks == 0
    assert_same(res, compute_acceptance(draft, cu, sampled, "off", num_draft_tokens=[4, 3]))


@needs_triton
def test_scv_mask_oob_kernel_matches_ref():
    gen = torch.Generator().manual_seed(seed := torch.seed())
    for cols in (0, 1, 2, 3):
        draft, cu, sampled, ks = make_batch(gen, 7, 5, cols=cols)
        for width in (0, 2, 5, 7):
            ref = scv_compute_mask_ref(draft, cu, sampled, width)
            host = scv_compute_mask_host(draft, cu, sampled, width)
            got = scv_compute_mask(draft, cu, sampled, width, force_triton=True)
            for a, b, c in zip(got, ref, host):
                assert torch.equal(a.cpu(), b.cpu()) and torch.equal(b.cpu(), c.cpu()), \
                    f"seed={seed} cols={cols} width={width}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_scv_mask_all_oob(mode, device):
    # 0 columns: nothing can be compared, nothing accepted, nothing to emit.
    draft = torch.tensor([5, 6, 7], device=device)
    cu = torch.tensor([2, 2, 3], dtype=torch.int64, device=device)
    sampled = torch.empty(3, 0, dtype=torch.int64, device=device)
    v = ScvVerifier(mode, device, max_num_reqs=4, max_spec_len=4, adaptive_capture_after=1)
    res = v.compute(draft, cu, sampled, num_draft_tokens=[2, 0, 1])
    assert res.accepted_mask.shape == (3, 2)
    assert not res.accepted_mask.any()
    assert res.num_accepted.cpu().tolist() == [0, 0, 0]
    assert res.valid_lengths.cpu().tolist() == [0, 0, 0]
    # Without the host list the width comes from the sampled tensor: 0 columns -> width 0.
    res = v.compute(draft, cu, sampled)
    assert res.accepted_mask.shape == (3, 0)
    assert res.num_accepted.cpu().tolist() == [0, 0, 0]
    if triton_ok(device):
        mask, num_acc, valid = scv_compute_mask(draft, cu, sampled, 2, force_triton=True)
        assert not mask.any() and num_acc.sum().item() == 0 and valid.sum().item() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_scv_mask_invalid_shape_falls_back(mode, device, caplog):
    draft = torch.tensor([5, 6, 7], device=device)
    cu = torch.tensor([2, 3], dtype=torch.int32, device=device)
    sampled = torch.tensor([[5, 9, P], [7, 4, P]], device=device)
    v = ScvVerifier(mode, device, max_num_reqs=4, max_spec_len=4)
    good = v.compute(draft, cu, sampled, num_draft_tokens=[2, 1])
    assert v.fallbacks == 0
    bad_inputs = [
        (draft, cu, sampled[0], None),                       # sampled 1-D
        (draft, cu, sampled.unsqueeze(0), None),             # sampled 3-D
        (draft, cu, sampled[:1], None),                      # row count != requests
        (draft.view(1, 3), cu, sampled, None),               # draft 2-D
        (draft, cu.view(2, 1), sampled, None),               # cu 2-D
        (draft, cu, sampled, [2, 2]),                        # host list disagrees with T
        (draft, cu, sampled, [3]),                           # host list length != requests
        (draft, cu, sampled.float(), None),                  # wrong dtype
    ]
    with caplog.at_level("WARNING", logger="vllm"):
        for i, (d, c, s, nd) in enumerate(bad_inputs, start=1):
            res = v.compute(d, c, s, num_draft_tokens=nd)     # must not raise
            assert res.mode == "off"
            assert v.fallbacks == i
    assert v.mode_counts["off"] >= len(bad_inputs)
    # The reference still does its best: the valid parts give the same answer.
    res = v.compute(draft, cu, sampled[:1], num_draft_tokens=None)
    assert res.num_accepted.cpu().tolist() == [1, 0]
    res = v.compute(draft, cu, sampled, num_draft_tokens=[2, 2])
    assert res.accepted_mask.shape == (2, 2)
    assert good.num_accepted.cpu().tolist() == [1, 1]


# ---- every mode agrees with the host baseline ---------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_modes_agree_with_off_on_random_ragged_batches(mode):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    v = ScvVerifier(mode, DEVICE, max_num_reqs=64, max_spec_len=6, adaptive_capture_after=2)
    for trial in range(12):
        num_reqs = int(torch.randint(1, 40, (1,), generator=gen))
        draft, cu, sampled, ks = make_batch(gen, num_reqs, 6)
        nd = ks if trial % 2 == 0 else None
        ref = compute_acceptance(draft, cu, sampled, "off", num_draft_tokens=nd)
        got = v.compute(draft, cu, sampled, num_draft_tokens=nd)
        assert_same(got, ref, f"seed={seed} trial={trial} mode={mode}")
        assert got.num_accepted.dtype == torch.int32 and got.accepted_mask.dtype == torch.bool
    assert v.fallbacks == 0


@needs_triton
def test_kernel_matches_ref_on_odd_shapes():
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    for num_reqs, max_k in [(1, 0), (1, 1), (1, 5), (3, 0), (5, 3), (17, 7), (33, 4)]:
        draft, cu, sampled, ks = make_batch(gen, num_reqs, max_k)
        width = max(ks, default=0)
        ref = scv_compute_mask_ref(draft, cu, sampled, width)
        got = scv_compute_mask(draft, cu, sampled, width, force_triton=True)
        for a, b in zip(got, ref):
            assert torch.equal(a.cpu(), b.cpu()), f"seed={seed} R={num_reqs} k={max_k}"


def test_matches_the_rejection_sampler():
    # The prefix rule reproduces the sampler's decisions, random requests included.
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.rejection_sampler import RejectionSampler
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    nd = torch.randint(0, 5, (24,), generator=gen).tolist()
    vocab = 4
    draft = torch.randint(0, vocab, (sum(nd),), generator=gen)
    logits = torch.randn(sum(nd) + len(nd), vocab, generator=gen) * 2
    params = [SamplingParams(temperature=0.0 if i % 3 == 0 else 1.0) for i in range(len(nd))]
    md = SamplingMetadata.build(params, None, None, None, "cpu")
    out = RejectionSampler()(draft, nd, None, logits, md)
    cu = torch.tensor(nd).cumsum(0)
    res = compute_acceptance(draft, cu, out, "vectorized", num_draft_tokens=nd)
    emitted = (out != P).sum(1)
    assert torch.equal(res.valid_lengths.long(), emitted), f"seed={seed}"
    assert torch.equal(res.num_accepted.long(), emitted - 1), f"seed={seed}"


# ---- mode resolution ----------------------------------------------------------------------------

def test_resolve_scv_mode():
    assert resolve_scv_mode(None, "cpu") == "vectorized"
    assert resolve_scv_mode("off", "cpu") == "off"
    assert resolve_scv_mode("Vectorized", "cpu") == "vectorized"
    with pytest.raises(ValueError, match="scv_mode"):
        resolve_scv_mode("fast", "cpu")
    if torch.cuda.is_available():
        assert resolve_scv_mode("graph", "cuda") == "graph"


@pytest.mark.parametrize("mode", ["graph", "adaptive"])
def test_graph_modes_degrade_on_cpu(mode):
    assert resolve_scv_mode(mode, "cpu") == "vectorized"
    v = ScvVerifier(mode, "cpu", max_num_reqs=8, max_spec_len=4)
    assert v.mode == "vectorized"
    gen = torch.Generator().manual_seed(0)
    draft, cu, sampled, ks = make_batch(gen, 5, 4, device="cpu")
    for _ in range(3):
        res = v.compute(draft, cu, sampled, num_draft_tokens=ks)
        assert res.mode == "vectorized"
    assert v.mode_counts == {"off": 0, "vectorized": 3, "graph": 0}
    assert v.num_graphs == 0 and v.warmup() == 0 and v.fallbacks == 0


def test_verifier_validates_config():
    with pytest.raises(ValueError, match="max_num_reqs"):
        ScvVerifier("off", "cpu", max_num_reqs=0)
    with pytest.raises(ValueError, match="max_spec_len"):
        ScvVerifier("off", "cpu", max_spec_len=0)
    with pytest.raises(ValueError, match="scv_mode"):
        ScvVerifier("sometimes", "cpu")


# ---- NWOR commit slots --------------------------------------------------------------------------

def _naive_commit_slots(mask, slots, ks):
    out, pos = [], 0
    for r, k in enumerate(ks):
        for i in range(k):
            ok = i < mask.shape[1] and bool(mask[r, i])
            out.append(int(slots[pos + i]) if ok else -1)
        pos += k
    return out


@pytest.mark.parametrize("force_triton", [False, pytest.param(True, marks=needs_triton)])
def test_commit_slots(force_triton):
    seed = torch.seed()
    gen = torch.Generator().manual_seed(seed)
    for num_reqs, max_k in [(1, 0), (1, 3), (6, 4), (20, 7)]:
        draft, cu, sampled, ks = make_batch(gen, num_reqs, max_k)
        res = compute_acceptance(draft, cu, sampled, "vectorized", num_draft_tokens=ks)
        slots = torch.randperm(1000, generator=gen)[:draft.shape[0]].to(DEVICE)
        want = _naive_commit_slots(res.accepted_mask.cpu(), slots.cpu(), ks)
        got = acceptance_to_commit_slots(res.accepted_mask, slots, cu, force_triton=force_triton)
        assert got.cpu().tolist() == want, f"seed={seed}"
        got = acceptance_to_commit_slots(res.accepted_mask, slots, cu, max(ks, default=0),
                                         force_triton=force_triton)
        assert got.cpu().tolist() == want, f"seed={seed}"
        # A narrower mask than k: positions past it are never committed.
        narrow = res.accepted_mask[:, :1]  # strided view
        got = acceptance_to_commit_slots(narrow, slots, cu, force_triton=force_triton)
        assert got.cpu().tolist() == _naive_commit_slots(narrow.cpu(), slots.cpu(), ks)
        assert torch.equal(acceptance_to_commit_slots_ref(narrow, slots, cu).cpu(), got.cpu())


# ---- GPU only -----------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("mode", ["vectorized", "graph", "adaptive"])
def test_no_host_sync_in_fast_modes(mode):
    gen = torch.Generator().manual_seed(0)
    v = ScvVerifier(mode, "cuda", max_num_reqs=16, max_spec_len=4, adaptive_capture_after=1)
    draft, cu, sampled, ks = make_batch(gen, 10, 4, device="cuda")
    v.compute(draft, cu, sampled, num_draft_tokens=ks)   # warm up: compile / capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = v.compute(draft, cu, sampled, num_draft_tokens=ks)
        slots = acceptance_to_commit_slots(res.accepted_mask, draft, cu, max(ks))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = compute_acceptance(draft, cu, sampled, "off", num_draft_tokens=ks)
    assert_same(res, ref)
    assert slots.shape == draft.shape
    if mode != "vectorized":
        assert res.mode == "graph"


@pytest.mark.cuda
@cuda
def test_graph_mode_replays():
    gen = torch.Generator().manual_seed(1)
    v = ScvVerifier("graph", "cuda", max_num_reqs=32, max_spec_len=5)
    for i in range(6):
        draft, cu, sampled, ks = make_batch(gen, 9 + i % 3, 5, device="cuda")  # bucket 16
        res = v.compute(draft, cu, sampled, max_spec_len=5)
        assert_same(res, compute_acceptance(draft, cu, sampled, "off", max_spec_len=5))
        assert res.mode == "graph"
    assert v.mode_counts["graph"] == 6
    assert v.num_captures == 1 and v.num_graphs == 1
    # A second bucket gets its own graph.
    draft, cu, sampled, ks = make_batch(gen, 3, 5, device="cuda")
    v.compute(draft, cu, sampled, max_spec_len=5)
    assert v.num_captures == 2 and v.mode_counts["graph"] == 7


@pytest.mark.cuda
@cuda
def test_adaptive_captures_hot_shapes_only():
    gen = torch.Generator().manual_seed(2)
    v = ScvVerifier("adaptive", "cuda", max_num_reqs=8, max_spec_len=3, adaptive_capture_after=3)
    draft, cu, sampled, ks = make_batch(gen, 4, 3, device="cuda")
    modes = [v.compute(draft, cu, sampled, max_spec_len=3).mode for _ in range(5)]
    assert modes == ["vectorized", "vectorized", "graph", "graph", "graph"]
    assert v.warmup(batch_sizes=[1], widths=[1, 2]) == 2


@pytest.mark.cuda
@cuda
def test_triton_matches_ref_on_cuda():
    gen = torch.Generator().manual_seed(3)
    for num_reqs, max_k in [(1, 0), (1, 4), (7, 3), (100, 8), (256, 5)]:
        for cols in (None, 0, 2):
            draft, cu, sampled, ks = make_batch(gen, num_reqs, max_k, cols=cols, device="cuda")
            width = max(ks, default=0)
            ref = scv_compute_mask_ref(draft, cu, sampled, width)
            got = scv_compute_mask(draft, cu, sampled, width)
            for a, b in zip(got, ref):
                assert torch.equal(a, b)
            mask = ref[0]
            slots = torch.arange(draft.shape[0], device="cuda") * 3
            assert torch.equal(acceptance_to_commit_slots(mask, slots, cu),
                               acceptance_to_commit_slots_ref(mask, slots, cu))
