"""paged_attention: reference vs a dense float64 per-token loop; Triton kernel (interpreter on
CPU, compiled on CUDA) vs the reference; CUDA-graph capture and replay with write_kv."""
import math

import pytest
import torch

from gpu_util import capture_graph
from vllm.v1.attention.kv_write import write_kv
from vllm.v1.attention.paged_attention import paged_attention, paged_attention_ref

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_batch(q_lens, ctx_lens, hq, hkv, d, block_size, n_pad=0, n_pad_reqs=0,
               dtype=torch.float32, device="cpu", seed=0, extra_blocks=3):
    """A flattened batch. q / k_new / v_new are non-contiguous views of one qkv projection
    output; the cache holds random K/V at the requests' context positions, scattered over
    randomly permuted blocks; padded tokens (token_req_idx -1) and padded requests (no tokens)
    at the end, as a CUDA-graph runner would lay them out."""
    g = torch.Generator().manual_seed(seed)
    R = len(q_lens) + n_pad_reqs
    T_real = sum(q_lens)
    T = T_real + n_pad
    # Made on the target device / dtype, then sliced, so the views stay non-contiguous there.
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g).to(dtype=dtype, device=device)
    q = qkv[:, :hq * d].view(T, hq, d)
    k_new = qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
    v_new = qkv[:, (hq + hkv) * d:].view(T, hkv, d)
    blocks_per_req = [-(-c // block_size) for c in ctx_lens]
    max_blocks = max(blocks_per_req + [1]) + 1
    num_blocks = sum(blocks_per_req) + extra_blocks
    kv = torch.randn(2, num_blocks, block_size, hkv, d, generator=g)
    perm = torch.randperm(num_blocks, generator=g)
    # Unused block-table entries hold -1: the kernel must never read them.
    bt = torch.full((R, max_blocks), -1, dtype=torch.int32)
    used = 0
    for r, nb in enumerate(blocks_per_req):
        bt[r, :nb] = perm[used:used + nb].int()
        used += nb
    ctx = torch.tensor(list(ctx_lens) + [0] * n_pad_reqs, dtype=torch.int32)
    qsl = torch.zeros(R + 1, dtype=torch.int32)
    qsl[1:len(q_lens) + 1] = torch.tensor(q_lens).cumsum(0).int()
    qsl[len(q_lens) + 1:] = T_real
    tok = torch.full((T,), -1, dtype=torch.int32)
    for r, n in enumerate(q_lens):
        tok[qsl[r]:qsl[r] + n] = r
    # Padding rows carry junk in q/k/v, as a graph's stale buffers would.
    to = dict(device=device)
    return dict(q=q, k_new=k_new, v_new=v_new, kv_cache_layer=kv.to(dtype=dtype, **to),
                block_tables=bt.to(**to), context_lens=ctx.to(**to),
                query_start_loc=qsl.to(**to), token_req_idx=tok.to(**to),
                scale=1.0 / math.sqrt(d))


def naive_attention(b):
    """Dense float64 loop over tokens: the definition of the semantics."""
    q, kn, vn, kv = (b[n].double().cpu() for n in ("q", "k_new", "v_new", "kv_cache_layer"))
    bt, ctx = b["block_tables"].cpu(), b["context_lens"].cpu()
    qsl, tok = b["query_start_loc"].cpu(), b["token_req_idx"].cpu()
    T, hq, d = q.shape
    hkv = kn.shape[1]
    G = hq // hkv
    bs = kv.shape[2]
    out = torch.zeros(T, hq, d, dtype=torch.float64)
    for t in range(T):
        r = int(tok[t])
        if r < 0:
            continue
        j = t - int(qsl[r])
        c = int(ctx[r])
        ks, vs = [], []
        for p in range(c):
            blk = int(bt[r, p // bs])
            ks.append(kv[0, blk, p % bs])
            vs.append(kv[1, blk, p % bs])
        for i in range(j + 1):
            ks.append(kn[int(qsl[r]) + i])
            vs.append(vn[int(qsl[r]) + i])
        K, V = torch.stack(ks), torch.stack(vs)              # [n, hkv, d]
        for h in range(hq):
            s = K[:, h // G] @ q[t, h] * b["scale"]
            out[t, h] = torch.softmax(s, 0) @ V[:, h // G]
    return out


# (q_lens, ctx_lens, hq, hkv, d, block_size, n_pad, n_pad_reqs)
REF_CASES = {
    "decode_b1": ([1], [37], 4, 4, 64, 16, 0, 0),
    "decode_ctx0": ([1], [0], 2, 2, 32, 16, 0, 0),
    "decode_k0_many": ([1, 1, 1, 1, 1], [1, 16, 17, 33, 5], 9, 3, 64, 16, 0, 0),
    "verify_ragged": ([1, 5, 3, 2], [16, 31, 0, 48], 8, 2, 32, 8, 3, 2),
    "prefill": ([70], [0], 12, 3, 32, 16, 0, 0),
    "chunked_mixed": ([23, 1, 4, 1], [33, 80, 15, 0], 8, 2, 128, 5, 2, 1),
    "odd_block": ([3, 2], [11, 9], 3, 1, 64, 5, 1, 0),
    "block_1": ([2, 1], [4, 3], 4, 2, 32, 1, 0, 0),
}


@pytest.mark.parametrize("strategy", [None, "batched", "loop"])
@pytest.mark.parametrize("case", list(REF_CASES))
def test_ref_matches_naive(case, strategy):
    b = make_batch(*REF_CASES[case])
    want = naive_attention(b)
    got = paged_attention_ref(**b, strategy=strategy)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    pad = b["token_req_idx"] < 0
    assert (got[pad] == 0).all()


def test_ref_writes_into_out():
    b = make_batch(*REF_CASES["verify_ragged"])
    out = torch.full_like(b["q"], 7.0)
    res = paged_attention_ref(**b, out=out)
    assert res is out
    torch.testing.assert_close(out.double(), naive_attention(b), atol=1e-5, rtol=1e-5)


def test_public_cpu_uses_ref():
    b = make_batch(*REF_CASES["chunked_mixed"])
    torch.testing.assert_close(paged_attention(**b), paged_attention_ref(**b))


# Small shapes: the interpreter runs a Python loop per program.
TRITON_CASES = {
    "decode_b1": (([1], [37], 4, 4, 64, 16, 0, 0), [1, 3]),
    "decode_gqa3": (([1, 1, 1], [16, 1, 40], 9, 3, 64, 16, 2, 1), [1, 4]),
    "verify_ragged_bs8": (([1, 5, 3, 2], [16, 31, 0, 48], 8, 2, 32, 8, 3, 2), [1, 2]),
    "chunked_bs5_d128": (([9, 1, 4], [33, 70, 0], 4, 1, 128, 5, 2, 0), [1, 3]),
    "prefill_big_tile": (([45], [0], 12, 3, 32, 16, 1, 0), [1]),
}


@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_interpreter_matches_ref(triton_cpu, case):
    args, splits = TRITON_CASES[case]
    b = make_batch(*args)
    want = paged_attention_ref(**b)
    for ns in splits:
        out = torch.full_like(b["q"], float("nan"))  # every row must be written
        got = paged_attention(**b, out=out, force_triton=True, num_splits=ns)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5, msg=f"num_splits={ns}")


# ---------------------------------------------------------------------------------------------
# CUDA (run by the lead on the H100)
# ---------------------------------------------------------------------------------------------

def _tol(dtype):
    return dict(atol=2e-2, rtol=2e-2) if dtype != torch.float32 else dict(atol=2e-4, rtol=2e-4)


def _ref_of(b):
    """Reference in fp32 from the same (possibly bf16) inputs."""
    b32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
           for k, v in b.items()}
    return paged_attention_ref(**b32)


def _randints(lo, hi, n, seed):
    return torch.randint(lo, hi, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


CUDA_CASES = {
    # 64 requests verifying 1 + 4 tokens, contexts up to 2000, Llama-3-8B head shapes.
    "verify64_llama": lambda: (
        [5] * 64, _randints(0, 2001, 64, seed=1), 32, 8, 128, 16, 7, 3),
    # Batch-1 decode on SmolLM2 shapes (exercises the context splits).
    "decode1_smollm": lambda: ([1], [1999], 9, 3, 64, 16, 0, 0),
    "decode128_smollm": lambda: (
        [1] * 128, _randints(1, 2001, 128, seed=2), 9, 3, 64, 16, 0, 0),
    "prefill1500": lambda: ([1500], [0], 32, 8, 128, 16, 12, 0),
    "mixed_chunked": lambda: ([700, 1, 5, 1, 300], [512, 1500, 33, 0, 17], 9, 3, 64, 16, 4, 1),
}


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_cuda_matches_ref(case, dtype):
    b = make_batch(*CUDA_CASES[case](), dtype=dtype, device="cuda")
    want = _ref_of(b)
    got = paged_attention(**b)
    torch.testing.assert_close(got.float(), want, **_tol(dtype))
    pad = b["token_req_idx"] < 0
    assert (got[pad] == 0).all()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_cuda_splits_agree(num_splits):
    b = make_batch([1, 3, 1], [1000, 17, 0], 32, 8, 128, 16, 2, 1, dtype=torch.bfloat16,
                   device="cuda")
    got = paged_attention(**b, num_splits=num_splits)
    torch.testing.assert_close(got.float(), _ref_of(b), **_tol(torch.bfloat16))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("num_splits", [None, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_graph_capture_replay(dtype, num_splits):
    """Capture write_kv + paged_attention once, then replay on new contents of the same
    buffers (other lengths, other requests, other padding) and compare with the reference."""
    hq, hkv, d, bs = 9, 3, 64, 16
    R, T = 8, 24
    first = make_batch([3] * 8, [40] * 8, hq, hkv, d, bs, 0, 0, dtype=dtype, device="cuda")
    num_blocks = 8 * 200 // bs + 8
    kv = torch.randn(2, num_blocks, bs, hkv, d, device="cuda").to(dtype)
    bt = torch.arange(8 * 13, device="cuda", dtype=torch.int32).view(8, 13)
    static = dict(first, kv_cache_layer=kv, block_tables=bt)
    slots = torch.full((T,), -1, dtype=torch.int64, device="cuda")
    out = torch.empty_like(static["q"])

    def step():
        write_kv(static["k_new"], static["v_new"], static["kv_cache_layer"], slots)
        paged_attention(**static, out=out, num_splits=num_splits)

    graph, _ = capture_graph(step)

    g = torch.Generator(device="cuda").manual_seed(3)
    for q_lens, ctx in [([1, 5, 2, 1, 4], [0, 100, 7, 150, 33]), ([20], [180]),
                        ([1] * 8, [199, 0, 1, 16, 17, 64, 120, 5])]:
        n = sum(q_lens)
        qsl = torch.zeros(R + 1, dtype=torch.int32)
        qsl[1:len(q_lens) + 1] = torch.tensor(q_lens).cumsum(0).int()
        qsl[len(q_lens) + 1:] = n
        tok = torch.full((T,), -1, dtype=torch.int32)
        sl = torch.full((T,), -1, dtype=torch.int64)
        for r, m in enumerate(q_lens):
            tok[qsl[r]:qsl[r] + m] = r
            # this step's tokens go to positions ctx .. ctx + m - 1 of request r's blocks
            for i in range(m):
                p = ctx[r] + i
                sl[qsl[r] + i] = int(bt[r, p // bs]) * bs + p % bs
        cl = torch.zeros(R, dtype=torch.int32)
        cl[:len(ctx)] = torch.tensor(ctx, dtype=torch.int32)
        static["query_start_loc"].copy_(qsl)
        static["token_req_idx"].copy_(tok)
        static["context_lens"].copy_(cl)
        slots.copy_(sl)
        for name in ("q", "k_new", "v_new"):
            static[name].copy_(torch.randn(static[name].shape, device="cuda", generator=g))
        kv.copy_(torch.randn(kv.shape, device="cuda", generator=g))
        graph.replay()
        torch.cuda.synchronize()
        want = _ref_of(static)
        torch.testing.assert_close(out.float(), want, **_tol(dtype))
        # write_kv landed this step's K at its slots
        real = sl >= 0
        blk, off = sl[real] // bs, sl[real] % bs
        torch.testing.assert_close(kv[0, blk.cuda(), off.cuda()],
                                   static["k_new"][real.cuda()].to(dtype))


@pytest.mark.parametrize("seed", range(6))
def test_triton_interpreter_random(triton_cpu, seed):
    """Random mixes, zero-length requests in the middle included."""
    g = torch.Generator().manual_seed(100 + seed)
    R = int(torch.randint(1, 5, (1,), generator=g))
    q_lens = torch.randint(0, 7, (R,), generator=g).tolist()
    q_lens[0] = max(q_lens[0], 1)
    ctx = torch.randint(0, 60, (R,), generator=g).tolist()
    hkv = int(torch.randint(1, 3, (1,), generator=g))
    G = [1, 3, 4][seed % 3]
    d = [32, 64][seed % 2]
    bs = [16, 8, 5][seed % 3]
    b = make_batch(q_lens, ctx, G * hkv, hkv, d, bs, n_pad=seed % 3, n_pad_reqs=seed % 2,
                   seed=seed)
    want = naive_attention(b)
    torch.testing.assert_close(paged_attention_ref(**b).double(), want, atol=1e-5, rtol=1e-5)
    got = paged_attention(**b, force_triton=True, num_splits=1 + seed % 3)
    torch.testing.assert_close(got.double(), want, atol=3e-5, rtol=3e-5)
