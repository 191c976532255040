"""commit_staged_kv: reference vs a naive loop; Triton kernel (interpreter on CPU, compiled on
CUDA) vs the reference. Rejected / unused rows (-1) must never touch the cache (sentinel)."""
import pytest
import torch

from gpu_util import capture_graph
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.spec_decode.nwor_commit import commit_staged_kv, commit_staged_kv_ref

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SENTINEL = -777.0


def make_inputs(L, S, hkv, d, block_size, num_blocks, n_accept, dtype=torch.float32,
                device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    staging = torch.randn(L, S, 2, hkv, d, generator=g)
    cache = torch.full((L, 2, num_blocks, block_size, hkv, d), SENTINEL)
    slots = torch.full((S,), PADDING_SLOT_ID, dtype=torch.int64)
    rows = torch.randperm(S, generator=g)[:n_accept]
    slots[rows] = torch.randperm(num_blocks * block_size, generator=g)[:n_accept]
    to = dict(device=device)
    return staging.to(dtype=dtype, **to), cache.to(dtype=dtype, **to), slots.to(**to)


def naive_commit(staging, cache, slots):
    bs = cache.shape[3]
    for s in range(staging.shape[1]):
        slot = int(slots[s])
        if slot < 0:
            continue
        for layer in range(staging.shape[0]):
            cache[layer, 0, slot // bs, slot % bs] = staging[layer, s, 0]
            cache[layer, 1, slot // bs, slot % bs] = staging[layer, s, 1]


CASES = {
    # L, S, Hkv, D, block_size, num_blocks, n_accept
    "one_row_rejected": (2, 1, 1, 64, 16, 2, 0),
    "one_row_accepted": (2, 1, 3, 64, 16, 2, 1),
    "ragged": (3, 12, 3, 64, 16, 4, 7),
    "odd_block_d128": (2, 7, 2, 128, 5, 5, 4),
    "all_accepted_d32": (4, 9, 8, 32, 8, 3, 9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ref_matches_naive(case):
    staging, cache, slots = make_inputs(*CASES[case])
    want = cache.clone()
    naive_commit(staging, want, slots)
    commit_staged_kv_ref(staging, cache, slots)
    assert torch.equal(cache, want)
    n_written = int((cache[:, 0] != SENTINEL).all(-1).all(-1).sum())
    assert n_written == int((slots >= 0).sum()) * cache.shape[0]


@pytest.mark.parametrize("case", list(CASES))
def test_triton_interpreter_matches_ref(triton_cpu, case):
    staging, cache, slots = make_inputs(*CASES[case], seed=1)
    want = cache.clone()
    commit_staged_kv_ref(staging, want, slots)
    commit_staged_kv(staging, cache, slots, force_triton=True)
    assert torch.equal(cache, want)


def test_public_cpu_uses_ref():
    staging, cache, slots = make_inputs(*CASES["ragged"])
    want = cache.clone()
    commit_staged_kv_ref(staging, want, slots)
    commit_staged_kv(staging, cache, slots)
    assert torch.equal(cache, want)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_matches_ref(dtype):
    # Llama-3-8B: 32 layers, 8 kv heads x 128; 64 requests x 4 drafts staged.
    staging, cache, slots = make_inputs(32, 256, 8, 128, 16, 300, 150, dtype=dtype,
                                        device="cuda")
    want = cache.clone()
    commit_staged_kv_ref(staging, want, slots)
    commit_staged_kv(staging, cache, slots)
    torch.cuda.synchronize()
    assert torch.equal(cache, want)


@pytest.mark.cuda
@cuda
def test_cuda_graph_capture_replay():
    staging, cache, slots = make_inputs(4, 16, 3, 64, 16, 10, 5, device="cuda")
    graph, _ = capture_graph(lambda: commit_staged_kv(staging, cache, slots))
    for seed in range(3):
        st2, c2, sl2 = make_inputs(4, 16, 3, 64, 16, 10, 3 * seed, device="cuda", seed=seed + 5)
        staging.copy_(st2), cache.copy_(c2), slots.copy_(sl2)
        commit_staged_kv_ref(st2, c2, sl2)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(cache, c2)
