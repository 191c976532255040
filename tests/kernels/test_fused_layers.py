"""Fused RMSNorm(+residual), rotary embedding and SiLU-and-mul: the references vs the original torch
formulas (bit-exact), the Triton kernels vs the references (interpreter on CPU, compiled on CUDA),
the module wiring, and CUDA-graph capture / replay."""
import pytest
import torch
import torch.nn.functional as F

from gpu_util import capture_graph
from vllm.model_executor.layers.fused_act import silu_and_mul, silu_and_mul_ref
from vllm.model_executor.layers.fused_norm import rms_norm, rms_norm_ref
from vllm.model_executor.layers.fused_rotary import rotary_embedding, rotary_embedding_ref
from vllm.model_executor.layers.norms import RMSNorm
from vllm.model_executor.layers.rotary import RotaryEmbedding

cuda = pytest.mark.cuda
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# ---- the original torch formulas (what norms.py / rotary.py / llama.py computed before) ----

def orig_rms(x, weight, eps, residual=None):
    if residual is not None:
        x = x + residual
        residual = x
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = out.to(x.dtype) * weight
    return out if residual is None else (out, residual)


def orig_rotary(positions, q, k, cos_sin, rd):
    cs = cos_sin[positions]
    half = rd // 2
    cos, sin = cs[:, None, :half], cs[:, None, half:]

    def rot(x):
        xr = x[..., :rd].float()
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
        return out if rd == x.shape[-1] else torch.cat([out, x[..., rd:]], dim=-1)
    return rot(q), rot(k)


def orig_silu_mul(x):
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---- inputs ----

def make_rms(T, H, dtype, device="cpu", seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H + (7 if strided else 0), generator=g) * 3
    x = x[:, :H] if strided else x  # non-contiguous rows
    r = torch.randn(T, H, generator=g)
    w = 1 + 0.1 * torch.randn(H, generator=g)
    return tuple(t.to(dtype=dtype, device=device) for t in (x, r, w))


def make_cos_sin(max_pos, rd, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    f = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
    return torch.cat([f.cos(), f.sin()], -1).float()


def make_rotary(T, hq, hkv, d, dtype, device="cpu", seed=0, max_pos=64):
    """q, k: non-contiguous views of a fused qkv projection output (row stride (hq+2hkv)*d)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(T, (hq + 2 * hkv) * d, generator=g).to(dtype=dtype, device=device)
    q = qkv[:, :hq * d].view(T, hq, d)
    k = qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
    pos = torch.randint(0, max_pos, (T,), generator=g).to(device)
    return qkv, q, k, pos


def tol(dtype):
    return {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
            torch.float16: dict(atol=2e-3, rtol=2e-3)}[dtype]


# ---- references vs the original formulas: bit-exact ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,H", [(1, 576), (3, 100), (37, 576)])
@pytest.mark.parametrize("with_res", [False, True])
def test_rms_ref_exact(T, H, dtype, with_res):
    x, r, w = make_rms(T, H, dtype, strided=True)
    got = rms_norm_ref(x, w, 1e-5, r if with_res else None)
    want = orig_rms(x, w, 1e-5, r if with_res else None)
    if with_res:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        assert torch.equal(got, want)
    # The module on CPU runs the reference.
    m = RMSNorm(H, 1e-5).to(dtype)
    m.weight.data.copy_(w)
    got_m = m(x, r) if with_res else m(x)
    if with_res:
        assert torch.equal(got_m[0], want[0]) and torch.equal(got_m[1], want[1])
    else:
        assert torch.equal(got_m, want)


ROT_CASES = {  # T, Hq, Hkv, D, rotary_dim
    "smollm_t1": (1, 9, 3, 64, 64),
    "smollm_t37": (37, 9, 3, 64, 64),
    "mha_partial": (3, 4, 4, 64, 32),
    "odd_d_partial": (3, 9, 3, 48, 24),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(ROT_CASES))
def test_rotary_ref_exact(case, dtype):
    T, hq, hkv, d, rd = ROT_CASES[case]
    qkv, q, k, pos = make_rotary(T, hq, hkv, d, dtype)
    before = qkv.clone()
    cs = make_cos_sin(64, rd)
    want = orig_rotary(pos, q, k, cs, rd)
    got = rotary_embedding_ref(pos, q, k, cs, rd)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(qkv, before)  # the reference does not write its inputs
    rope = RotaryEmbedding(d, 64, 10000.0, rotary_dim=rd)
    assert torch.equal(rope.cos_sin, cs)
    got_m = rope(pos, q, k)
    assert torch.equal(got_m[0], want[0]) and torch.equal(got_m[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,I", [(1, 1536), (3, 100), (37, 64)])
def test_silu_and_mul_ref_exact(T, I, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(T, 2 * I, generator=g) * 4).to(dtype)
    assert torch.equal(silu_and_mul_ref(x), orig_silu_mul(x))
    assert torch.equal(silu_and_mul(x), orig_silu_mul(x))  # CPU public path = reference


# ---- kernels under the interpreter on CPU (small shapes) ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H,strided", [(1, 64, False), (3, 100, True)])
@pytest.mark.parametrize("with_res", [False, True])
def test_rms_kernel_interpreter(triton_cpu, T, H, strided, dtype, with_res):
    x, r, w = make_rms(T, H, dtype, strided=strided)
    res = r if with_res else None
    got = rms_norm(x, w, 1e-6, res, force_triton=True)
    want = rms_norm_ref(x, w, 1e-6, res)
    if with_res:
        # The sum is exact in fp32; the interpreter's fp32 -> bf16 cast truncates (the GPU rounds
        # to nearest even, checked exactly in the CUDA test), so allow one bf16 ulp there.
        if dtype == torch.float32:
            assert torch.equal(got[1], want[1])
        else:
            torch.testing.assert_close(got[1], want[1], atol=0, rtol=2 ** -7)
        got, want = got[0], want[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["smollm_t1", "mha_partial", "odd_d_partial"])
def test_rotary_kernel_interpreter(triton_cpu, case, dtype):
    T, hq, hkv, d, rd = ROT_CASES[case]
    qkv, q, k, pos = make_rotary(T, hq, hkv, d, dtype)
    cs = make_cos_sin(64, rd)
    want_q, want_k = rotary_embedding_ref(pos, q, k, cs, rd)
    v_before = qkv[:, (hq + hkv) * d:].clone()
    got_q, got_k = rotary_embedding(pos, q, k, cs, rd, force_triton=True)
    # In place: the returned tensors are the qkv views themselves; v is untouched.
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
    assert torch.equal(qkv[:, (hq + hkv) * d:], v_before)
    torch.testing.assert_close(got_q, want_q, **tol(dtype))
    torch.testing.assert_close(got_k, want_k, **tol(dtype))
    assert torch.equal(got_q[..., rd:], want_q[..., rd:])  # pass-through dims untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,I", [(1, 96), (3, 100)])
def test_silu_and_mul_kernel_interpreter(triton_cpu, T, I, dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(T, 2 * I + 5, generator=g) * 4).to(dtype)[:, :2 * I]  # strided rows
    got = silu_and_mul(x, force_triton=True)
    assert got.shape == (T, I) and got.dtype == dtype
    torch.testing.assert_close(got, silu_and_mul_ref(x), **tol(dtype))


def test_empty_inputs(triton_cpu):
    x = torch.empty(0, 64)
    w = torch.ones(64)
    assert rms_norm(x, w, 1e-6, force_triton=True).shape == (0, 64)
    out, res = rms_norm(x, w, 1e-6, x, force_triton=True)
    assert out.shape == res.shape == (0, 64)
    assert silu_and_mul(x, force_triton=True).shape == (0, 32)
    q, k = torch.empty(0, 2, 64), torch.empty(0, 1, 64)
    rq, rk = rotary_embedding(torch.empty(0, dtype=torch.long), q, k, make_cos_sin(8, 64), 64,
                              force_triton=True)
    assert rq.shape == q.shape and rk.shape == k.shape


# ---- CUDA: compiled kernels vs references, and CUDA-graph capture / replay ----

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,H", [(1, 576), (37, 576), (3, 100), (5, 4096)])
@pytest.mark.parametrize("with_res", [False, True])
def test_rms_kernel_cuda(T, H, dtype, with_res):
    x, r, w = make_rms(T, H, dtype, device="cuda", strided=True)
    res = r if with_res else None
    got = rms_norm(x, w, 1e-6, res)
    want = rms_norm_ref(x, w, 1e-6, res)
    if with_res:
        assert torch.equal(got[1], want[1])
        got, want = got[0], want[0]
    torch.testing.assert_close(got, want, **tol(dtype))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(ROT_CASES))
def test_rotary_kernel_cuda(case, dtype):
    T, hq, hkv, d, rd = ROT_CASES[case]
    qkv, q, k, pos = make_rotary(T, hq, hkv, d, dtype, device="cuda")
    cs = make_cos_sin(64, rd).cuda()
    want_q, want_k = rotary_embedding_ref(pos, q, k, cs, rd)
    got_q, got_k = rotary_embedding(pos, q, k, cs, rd)
    assert got_q.data_ptr() == q.data_ptr()
    torch.testing.assert_close(got_q, want_q, **tol(dtype))
    torch.testing.assert_close(got_k, want_k, **tol(dtype))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,I", [(1, 1536), (37, 1536), (3, 100)])
def test_silu_and_mul_kernel_cuda(T, I, dtype):
    x = (torch.randn(T, 2 * I, device="cuda") * 4).to(dtype)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **tol(dtype))


@cuda
def test_cuda_graph_capture_replay():
    dtype, T, H, hq, hkv, d, I = torch.bfloat16, 4, 576, 9, 3, 64, 1536
    x, r, w = make_rms(T, H, dtype, device="cuda")
    qkv, q, k, pos = make_rotary(T, hq, hkv, d, dtype, device="cuda")
    qkv0 = qkv.clone()
    cs = make_cos_sin(64, d).cuda()
    gu = (torch.randn(T, 2 * I, device="cuda")).to(dtype)

    def step():
        qkv.copy_(qkv0)
        out, res = rms_norm(x, w, 1e-6, r)
        rq, rk = rotary_embedding(pos, q, k, cs, d)
        return out, res, rq, rk, silu_and_mul(gu)

    graph, outs = capture_graph(step)   # compiled / warmed up outside the capture
    # New inputs in the same buffers; replay must follow them.
    x.copy_(torch.randn_like(x))
    r.copy_(torch.randn_like(r))
    qkv0.copy_(torch.randn_like(qkv0))
    pos.copy_(torch.randint(0, 64, pos.shape, device="cuda"))
    gu.copy_(torch.randn_like(gu))
    graph.replay()
    torch.cuda.synchronize()
    q0 = qkv0[:, :hq * d].view(T, hq, d)
    k0 = qkv0[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
    want = (*rms_norm_ref(x, w, 1e-6, r), *rotary_embedding_ref(pos, q0, k0, cs, d),
            silu_and_mul_ref(gu))
    for got, ref in zip(outs, want):
        torch.testing.assert_close(got, ref, **tol(dtype))
