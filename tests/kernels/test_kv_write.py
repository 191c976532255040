"""write_kv: reference vs a naive per-token loop; Triton kernel (interpreter on CPU, compiled on
CUDA) vs the reference. The cache and staging are poisoned with a sentinel first: slots / rows
that are -1 must stay untouched."""
import pytest
import torch

from gpu_util import capture_graph
from vllm.v1.attention.kv_write import write_kv, write_kv_ref
from vllm.v1.constants import PADDING_SLOT_ID

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SENTINEL = -12345.0


def make_inputs(T, hkv, d, block_size, num_blocks, n_skip, n_staged, S, dtype=torch.float32,
                device="cpu", seed=0):
    """key/value are non-contiguous views of a qkv projection output; slots are distinct random
    cache slots with n_skip of them -1; n_staged tokens get distinct staging rows."""
    g = torch.Generator().manual_seed(seed)
    hq = 2 * hkv
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g).to(dtype=dtype, device=device)
    key = qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
    value = qkv[:, (hq + hkv) * d:].view(T, hkv, d)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:T].long()
    skip = torch.randperm(T, generator=g)[:n_skip]
    slots[skip] = PADDING_SLOT_ID
    stage = torch.full((T,), -1, dtype=torch.int64)
    staged = torch.randperm(T, generator=g)[:n_staged]
    stage[staged] = torch.randperm(S, generator=g)[:n_staged]
    # One [L, 2, NB, BS, Hkv, D] cache: the kernel gets a layer view (offset base pointer).
    cache = torch.full((3, 2, num_blocks, block_size, hkv, d), SENTINEL)
    staging = torch.full((3, S, 2, hkv, d), SENTINEL)
    to = dict(device=device)
    return (key, value, cache.to(dtype=dtype, **to), slots.to(**to), staging.to(dtype=dtype, **to),
            stage.to(**to))


def naive_write(key, value, layer, slots, staging, stage):
    bs = layer.shape[2]
    for t in range(key.shape[0]):
        s = int(slots[t])
        if s >= 0:
            layer[0, s // bs, s % bs] = key[t]
            layer[1, s // bs, s % bs] = value[t]
        if staging is not None and int(stage[t]) >= 0:
            staging[int(stage[t]), 0] = key[t]
            staging[int(stage[t]), 1] = value[t]


CASES = {
    # T, Hkv, D, block_size, num_blocks, n_skip, n_staged, S
    "one_token": (1, 1, 64, 16, 2, 0, 0, 4),
    "one_token_skipped": (1, 3, 64, 16, 2, 1, 0, 4),
    "ragged_bs16": (13, 3, 64, 16, 5, 4, 5, 8),
    "odd_block_d128": (9, 2, 128, 5, 7, 2, 3, 3),
    "d32_g8_bs8": (20, 8, 32, 8, 6, 0, 20, 20),
    "all_padding": (6, 2, 32, 16, 2, 6, 0, 4),
}


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_ref_matches_naive(case, staged):
    key, value, cache, slots, staging, stage = make_inputs(*CASES[case])
    want_cache, want_st = cache.clone(), staging.clone()
    naive_write(key, value, want_cache[1], slots, want_st[2] if staged else None, stage)
    write_kv_ref(key, value, cache[1], slots, staging[2] if staged else None,
                 stage if staged else None)
    assert torch.equal(cache, want_cache)
    assert torch.equal(staging, want_st)
    # untouched = exactly the slots nobody wrote
    written = torch.zeros(cache[1, 0].shape[:2], dtype=torch.bool).view(-1)
    written[slots[slots >= 0]] = True
    layer_k = cache[1, 0].reshape(-1, *cache.shape[-2:])
    assert (layer_k[~written] == SENTINEL).all()
    assert (layer_k[written] != SENTINEL).all()
    assert (cache[0] == SENTINEL).all() and (cache[2] == SENTINEL).all()


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_interpreter_matches_ref(triton_cpu, case, staged):
    key, value, cache, slots, staging, stage = make_inputs(*CASES[case], seed=1)
    want_cache, want_st = cache.clone(), staging.clone()
    write_kv_ref(key, value, want_cache[1], slots, want_st[2] if staged else None,
                 stage if staged else None)
    write_kv(key, value, cache[1], slots, staging[2] if staged else None,
             stage if staged else None, force_triton=True)
    assert torch.equal(cache, want_cache)
    assert torch.equal(staging, want_st)


def test_public_cpu_uses_ref():
    key, value, cache, slots, staging, stage = make_inputs(*CASES["ragged_bs16"])
    want = cache.clone()
    write_kv_ref(key, value, want[0], slots)
    write_kv(key, value, cache[0], slots)
    assert torch.equal(cache, want)


def test_int32_stage_index(triton_cpu):
    key, value, cache, slots, staging, stage = make_inputs(*CASES["ragged_bs16"])
    want_st = staging.clone()
    write_kv_ref(key, value, cache[0].clone(), slots, want_st[0], stage)
    write_kv(key, value, cache[0], slots, staging[0], stage.int(), force_triton=True)
    assert torch.equal(staging, want_st)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("staged", [False, True])
def test_cuda_matches_ref(dtype, staged):
    # 64 requests x (1 + 4) tokens of Llama-3-8B KV shapes, some padding.
    key, value, cache, slots, staging, stage = make_inputs(
        330, 8, 128, 16, 400, 10, 256, 256, dtype=dtype, device="cuda")
    want_cache, want_st = cache.clone(), staging.clone()
    write_kv_ref(key, value, want_cache[1], slots, want_st[1] if staged else None,
                 stage if staged else None)
    write_kv(key, value, cache[1], slots, staging[1] if staged else None,
             stage if staged else None)
    torch.cuda.synchronize()
    assert torch.equal(cache, want_cache)
    assert torch.equal(staging, want_st)


@pytest.mark.cuda
@cuda
def test_cuda_graph_capture_replay():
    key, value, cache, slots, staging, stage = make_inputs(
        40, 3, 64, 16, 20, 5, 10, 16, device="cuda")

    def step():
        write_kv(key, value, cache[0], slots, staging[0], stage)

    graph, _ = capture_graph(step)
    for seed in range(3):
        k2, v2, c2, sl2, st2, si2 = make_inputs(40, 3, 64, 16, 20, 5 + seed, 10 - seed, 16,
                                                device="cuda", seed=seed + 10)
        key.copy_(k2), value.copy_(v2), slots.copy_(sl2), stage.copy_(si2)
        cache.copy_(c2), staging.copy_(st2)
        write_kv_ref(k2, v2, c2[0], sl2, st2[0], si2)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(cache, c2) and torch.equal(staging, st2)
