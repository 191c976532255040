"""A Llama attention layer with the fused rope + KV-write kernel equals the same layer with the
unfused sequence (VLLM_DISABLE_KERNEL_FUSION=1): output, KV cache and NWOR staging buffer, for a
mixed batch (a prefill chunk, decode tokens, drafts staged in NWOR stage mode, padding rows).
On the CPU both run the torch references (the wiring is checked); on CUDA (cuda marker) the
Triton kernels, so the attention kernel really reads the k the fused kernel rotated in place."""
import pytest
import torch
from transformers import LlamaConfig

from vllm.forward_context import AttentionMetadata, ForwardContext, set_forward_context
from vllm.model_executor.layers.linear import default_init_
from vllm.model_executor.models.llama import LlamaAttention


def _layer(fused: bool, monkeypatch, device, dtype):
    monkeypatch.setenv("VLLM_DISABLE_KERNEL_FUSION", "0" if fused else "1")
    cfg = LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=256)
    layer = LlamaAttention(cfg, layer_idx=1, qkv_bias=False).to(device=device, dtype=dtype)
    layer.rotary.cos_sin = layer.rotary.cos_sin.float()
    default_init_(layer, seed=5)
    for p in layer.parameters():
        p.data.mul_(40)         # sharper attention: differences would show
    assert layer.attn.fuse is fused
    return layer


def _inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    # request 0: 5 prompt tokens at positions 0..4 (no context); request 1: 1 decode token at
    # position 7 (7 cached); request 2: 1 verified token + 3 drafts at positions 9..12, drafts
    # staged; 2 padding rows.
    T, page, nb, D, hkv = 12, 4, 16, 16, 2
    x = torch.randn(T, 96, generator=g).to(device=device, dtype=dtype)
    pos = torch.tensor([0, 1, 2, 3, 4, 7, 9, 10, 11, 12, 0, 0], device=device)
    bt = torch.tensor([[0, 1, 0, 0], [2, 3, 0, 0], [4, 5, 6, 7]], dtype=torch.int32,
                      device=device)
    # position 7 of request 1 -> block 3, offset 3; position 9 of request 2 -> block 6, offset 1
    slots = [0, 1, 2, 3, 4, 3 * page + 3, 6 * page + 1, -1, -1, -1, -1, -1]
    slot_mapping = torch.tensor(slots, dtype=torch.int64, device=device)
    stage = torch.tensor([-1] * 7 + [0, 1, 2, -1, -1], dtype=torch.int64, device=device)
    md = AttentionMetadata(
        slot_mapping=slot_mapping, block_tables=bt,
        context_lens=torch.tensor([0, 7, 9], dtype=torch.int32, device=device),
        query_start_loc=torch.tensor([0, 5, 6, 10], dtype=torch.int32, device=device),
        token_req_idx=torch.tensor([0] * 5 + [1] + [2] * 4 + [-1, -1], dtype=torch.int32,
                                   device=device),
        stage_index=stage)
    cache = torch.randn(2, 2, nb, page, hkv, D, generator=g).to(device=device, dtype=dtype)
    staging = torch.zeros(2, 8, 2, hkv, D, device=device, dtype=dtype)
    return x, pos, md, cache, staging


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_unfused_layer(device, dtype, monkeypatch):
    results = []
    for fused in (True, False):
        layer = _layer(fused, monkeypatch, device, dtype)
        x, pos, md, cache, staging = _inputs(device, dtype)
        with torch.inference_mode(), set_forward_context(ForwardContext(md, cache, staging)):
            out = layer(pos, x)
        results.append((out, cache, staging))
    (o1, c1, s1), (o2, c2, s2) = results
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(o1, o2, **tol)
    torch.testing.assert_close(c1, c2, **tol)
    torch.testing.assert_close(s1, s2, **tol)
    assert (o1[10:] == 0).all()                 # padding rows attend to nothing
    assert (s1[1, 3:] == 0).all() and (s1[0] == 0).all()   # only rows 0..2 of layer 1 staged
    if device == "cpu":                         # the references: bit-identical
        assert torch.equal(o1, o2) and torch.equal(c1, c2) and torch.equal(s1, s2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fusion_saves_one_kernel_per_layer(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    counts = {}
    for fused in (True, False):
        layer = _layer(fused, monkeypatch, "cuda", torch.bfloat16)
        x, pos, md, cache, staging = _inputs("cuda", torch.bfloat16)
        ctx = ForwardContext(md, cache, staging)
        with torch.inference_mode(), set_forward_context(ctx):
            layer(pos, x)                       # compile / warm up
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                layer(pos, x)
                torch.cuda.synchronize()
        counts[fused] = sum(1 for e in prof.events()
                            if "CUDA" in str(e.device_type) and "emcpy" not in e.name
                            and "emset" not in e.name)
    assert counts[True] == counts[False] - 1, counts
