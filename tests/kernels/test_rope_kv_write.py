"""rope_write_kv (rotary of q and k + KV-cache / NWOR staging write in one kernel): the reference
equals the two unfused references; the Triton kernel (interpreter on CPU, compiled on CUDA)
equals the reference on odd shapes, partial rotary, strided q/k/v views, padding slots (-1) and
NWOR staging rows (-1 = not staged). Cache and staging are poisoned first: what must not be
written stays the sentinel."""
import pytest
import torch

from gpu_util import capture_graph
from vllm.model_executor.layers.fused_rotary import rotary_embedding_ref
from vllm.v1.attention.kv_write import write_kv_ref
from vllm.v1.constants import PADDING_SLOT_ID
from vllm.v1.attention.rope_kv_write import rope_write_kv, rope_write_kv_ref

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SENTINEL = -1000.0  # exact in bf16 / fp16, far from any rotated value


def cos_sin_table(max_pos, rd, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    f = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
    return torch.cat([f.cos(), f.sin()], -1).float()


def make(T, hq, hkv, d, rd, page, nblocks, n_skip, n_staged, S, dtype=torch.float32,
         device="cpu", seed=0):
    """q / k / v: strided views of one qkv output; distinct random slots (n_skip of them -1);
    n_staged tokens with distinct staging rows; a 3-layer cache (the kernel gets layer 1)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g).to(dtype)
    q = qkv[:, :hq * d].view(T, hq, d)
    k = qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(T, hkv, d)
    pos = torch.randint(0, 100, (T,), generator=g)
    slots = torch.randperm(nblocks * page, generator=g)[:T].long()
    slots[torch.randperm(T, generator=g)[:n_skip]] = PADDING_SLOT_ID
    stage = torch.full((T,), -1, dtype=torch.int64)
    stage[torch.randperm(T, generator=g)[:n_staged]] = torch.randperm(S, generator=g)[:n_staged]
    cache = torch.full((3, 2, nblocks, page, hkv, d), SENTINEL).to(dtype)
    staging = torch.full((3, S, 2, hkv, d), SENTINEL).to(dtype)
    cs = cos_sin_table(128, rd)
    to = lambda *ts: [t.to(device) for t in ts]  # noqa: E731
    qkv, pos, slots, stage, cache, staging, cs = to(qkv, pos, slots, stage, cache, staging, cs)
    hq_d, hkv_d = hq * d, hkv * d
    q = qkv[:, :hq_d].view(T, hq, d)
    k = qkv[:, hq_d:hq_d + hkv_d].view(T, hkv, d)
    v = qkv[:, hq_d + hkv_d:].view(T, hkv, d)
    return qkv, q, k, v, pos, cs, cache, slots, staging, stage


CASES = {
    # T, Hq, Hkv, D, rotary_dim, page, blocks, n_skip, n_staged, S
    "decode_t1_smollm": (1, 9, 3, 64, 64, 16, 2, 0, 0, 4),
    "padded_t1": (1, 9, 3, 64, 64, 16, 2, 1, 0, 4),
    "verify_odd_gqa": (13, 6, 2, 64, 64, 16, 5, 3, 5, 8),
    "partial_rotary_page5": (9, 4, 4, 48, 32, 5, 7, 2, 3, 3),
    "d128_mha_all_staged": (7, 3, 3, 128, 128, 8, 4, 0, 7, 7),
    "all_padding": (6, 4, 2, 32, 32, 16, 2, 6, 0, 4),
}
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def run_ref(args, staged):
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = args
    rd = cs.shape[-1]
    st = (staging[2], stage) if staged else (None, None)
    return rope_write_kv_ref(pos, q, k, v, cs, rd, cache[1], slots, *st)


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_ref_is_rotary_then_write(case, staged):
    a = make(*CASES[case])
    b = [t.clone() for t in make(*CASES[case])]
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = b
    rd = cs.shape[-1]
    want_q, want_k = rotary_embedding_ref(pos, q, k, cs, rd)
    write_kv_ref(want_k, v, cache[1], slots, staging[2] if staged else None,
                 stage if staged else None)
    got_q, got_k = run_ref(a, staged)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(a[6], cache) and torch.equal(a[8], staging)
    if not staged:
        assert (a[8] == SENTINEL).all()


def _check_kernel(case, staged, dtype, device):
    want = make(*CASES[case], dtype=dtype, device=device, seed=3)
    got = make(*CASES[case], dtype=dtype, device=device, seed=3)
    wq, wk = run_ref(want, staged)
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = got
    v_before = v.clone()
    rq, rk = rope_write_kv(pos, q, k, v, cs, cs.shape[-1], cache[1], slots,
                           staging[2] if staged else None, stage if staged else None,
                           force_triton=device == "cpu")
    if device == "cuda":
        torch.cuda.synchronize()
    # In place: the returned tensors are the qkv views; v is untouched.
    assert rq.data_ptr() == q.data_ptr() and rk.data_ptr() == k.data_ptr()
    assert torch.equal(v, v_before)
    torch.testing.assert_close(rq, wq, **TOL[dtype])
    torch.testing.assert_close(rk, wk, **TOL[dtype])
    rd = cs.shape[-1]
    assert torch.equal(rq[..., rd:], wq[..., rd:]) and torch.equal(rk[..., rd:], wk[..., rd:])
    # Written exactly where the reference wrote (sentinel elsewhere), the same values as the
    # kernel's own rotated k (what attention reads this step) and v.
    w_cache, w_st = want[6], want[8]
    assert torch.equal(cache == SENTINEL, w_cache == SENTINEL)
    assert torch.equal(staging == SENTINEL, w_st == SENTINEL)
    torch.testing.assert_close(cache, w_cache, **TOL[dtype])
    torch.testing.assert_close(staging, w_st, **TOL[dtype])
    page = cache.shape[3]
    for t in range(q.shape[0]):
        s = int(slots[t])
        if s >= 0:
            assert torch.equal(cache[1, 0, s // page, s % page], rk[t])
            assert torch.equal(cache[1, 1, s // page, s % page], v[t])
        if staged and int(stage[t]) >= 0:
            assert torch.equal(staging[2, int(stage[t]), 0], rk[t])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_interpreter_matches_ref(triton_cpu, case, staged, dtype):
    _check_kernel(case, staged, dtype, "cpu")


def test_public_cpu_uses_ref():
    a = make(*CASES["verify_odd_gqa"])
    b = [t.clone() for t in make(*CASES["verify_odd_gqa"])]
    want_q, want_k = run_ref(a, True)
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = b
    got_q, got_k = rope_write_kv(pos, q, k, v, cs, cs.shape[-1], cache[1], slots, staging[2],
                                 stage)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(cache, a[6]) and torch.equal(staging, a[8])


def test_bad_args_raise(triton_cpu):
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = make(*CASES["verify_odd_gqa"])
    with pytest.raises(ValueError, match="rotary_dim"):
        rope_write_kv(pos, q, k, v, cs, 66, cache[1], slots, force_triton=True)
    with pytest.raises(ValueError, match="staging"):
        rope_write_kv(pos, q, k, v, cs, 64, cache[1], slots, staging[0], None,
                      force_triton=True)


def test_empty(triton_cpu):
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = make(*CASES["verify_odd_gqa"])
    rq, rk = rope_write_kv(pos[:0], q[:0], k[:0], v[:0], cs, 64, cache[1], slots[:0],
                           force_triton=True)
    assert rq.shape[0] == 0 and (cache == SENTINEL).all()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize("case", ["decode_t1_smollm", "verify_odd_gqa", "partial_rotary_page5",
                                  "d128_mha_all_staged", "all_padding"])
def test_cuda_matches_ref(case, staged, dtype):
    _check_kernel(case, staged, dtype, "cuda")


@pytest.mark.cuda
@cuda
def test_cuda_llama8b_shapes_and_graph_replay():
    # 64 requests x (1 + 4) tokens at Llama-3-8B's head shapes, some padding, replayed from a
    # CUDA graph after the inputs change in place.
    T, hq, hkv, d = 320, 32, 8, 128
    args = make(T, hq, hkv, d, d, 16, 400, 10, 256, 256, dtype=torch.bfloat16, device="cuda")
    qkv, q, k, v, pos, cs, cache, slots, staging, stage = args
    fresh = qkv.clone()

    def step():
        rope_write_kv(pos, q, k, v, cs, d, cache[0], slots, staging[0], stage)

    graph, _ = capture_graph(step)
    qkv.copy_(fresh)
    pos.copy_(torch.randint(0, 100, (T,), device="cuda"))
    cache.fill_(SENTINEL)
    staging.fill_(SENTINEL)
    want = [t.clone() for t in args]
    wq, wk = rope_write_kv_ref(want[4], want[1], want[2], want[3], want[5], d, want[6][0],
                               want[7], want[8][0], want[9])
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(q, wq, **TOL[torch.bfloat16])
    torch.testing.assert_close(k, wk, **TOL[torch.bfloat16])
    assert torch.equal(cache == SENTINEL, want[6] == SENTINEL)
    assert torch.equal(staging == SENTINEL, want[8] == SENTINEL)
    torch.testing.assert_close(cache, want[6], **TOL[torch.bfloat16])
