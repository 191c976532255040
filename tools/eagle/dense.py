"""Dense (no KV cache) forwards of the engine's own Llama modules, for training an EAGLE head.

The engine's attention reads a paged KV cache through a forward context; training instead runs
whole right-padded sequences [B, L] at once with causal SDPA. Everything else is the modules'
own weights: the target's hidden states here are the tensor the runner hands EagleProposer
(`observe_target`): the output of the model's forward, i.e. AFTER the final RMSNorm.

`differentiable=True` uses the plain-torch `_ref` formulas (the fused Triton kernels have no
backward); the target runs under no_grad with the engine's own (fused on CUDA) kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm.model_executor.layers.fused_act import silu_and_mul_ref
from vllm.model_executor.layers.fused_norm import rms_norm_ref
from vllm.v1.attention.rotary_ref import rotary_embedding_ref


def _norm(mod, x, residual=None, differentiable=False):
    if differentiable:
        return rms_norm_ref(x, mod.weight, mod.eps, residual)
    return mod(x, residual)


def attention(attn, x: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """LlamaAttention over whole sequences: x [B, L, H] -> [B, L, H], causal, positions 0..L-1."""
    B, L, _ = x.shape
    nh, nkv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q, k, v = attn.qkv_proj(x).split([nh * d, nkv * d, nkv * d], dim=-1)
    pos = torch.arange(L, device=x.device).repeat(B)                      # [B*L]
    q, k = q.reshape(B * L, nh, d), k.reshape(B * L, nkv, d)
    if differentiable:
        q, k = rotary_embedding_ref(pos, q, k, attn.rotary.cos_sin, attn.rotary.rotary_dim)
    else:
        q, k = attn.rotary(pos, q.contiguous(), k.contiguous())
    q = q.view(B, L, nh, d).transpose(1, 2)                               # [B, nh, L, d]
    k = k.view(B, L, nkv, d).transpose(1, 2)
    v = v.reshape(B, L, nkv, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.attn.scale,
                                       enable_gqa=nh != nkv)
    return attn.o_proj(o.transpose(1, 2).reshape(B, L, nh * d))


def _mlp(mlp, x, differentiable=False):
    if differentiable:
        return mlp.down_proj(silu_and_mul_ref(mlp.gate_up_proj(x)))
    return mlp(x)


@torch.no_grad()
def target_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, L] (right-padded) -> the target's final hidden states [B, L, H] (after the final
    norm: what the runner passes to observe_target and to compute_logits)."""
    x = model.embed(ids)
    residual = None
    for layer in model.layers:
        if residual is None:
            residual, x = x, layer.input_layernorm(x)
        else:
            x, residual = layer.input_layernorm(x, residual)
        x = attention(layer.self_attn, x)
        x, residual = layer.post_attention_layernorm(x, residual)
        x = layer.mlp(x)
    x, _ = model.norm(x, residual)
    return x


def head_forward(head, embeds: torch.Tensor, hidden: torch.Tensor,
                 differentiable: bool = True) -> torch.Tensor:
    """EagleHead.forward over whole sequences: embeds/hidden [B, L, H] -> features [B, L, H].
    Row i reads (embedding of token i + 1, target hidden at i) and predicts the feature at i+1."""
    x = head.fc(torch.cat([embeds, hidden.to(embeds.dtype)], dim=-1))
    residual = x
    if head.input_layernorm is not None:
        x = _norm(head.input_layernorm, x, None, differentiable)
    x = attention(head.self_attn, x, differentiable)
    x, residual = _norm(head.post_attention_layernorm, x, residual, differentiable)
    return _mlp(head.mlp, x, differentiable) + residual
