"""Llama-family decoder (Llama 2/3, Mistral, SmolLM2, Qwen2 with QKV bias and an untied head)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from vllm.distributed.parallel_state import divide, get_tp_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.fused_act import silu_and_mul
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear, qkv_sizes
from vllm.model_executor.layers.norms import RMSNorm
from vllm.model_executor.layers.rotary import RotaryEmbedding
from vllm.model_executor.layers.vocab import ParallelLMHead, VocabParallelEmbedding

# HF name fragment -> (our fused module fragment, part index)
_STACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}


def rope_params(config) -> tuple[float, Optional[dict]]:
    """(theta, scaling dict or None). transformers >= 5 keeps both in config.rope_parameters;
    older configs have rope_theta / rope_scaling attributes."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        theta = rp.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        scaling = rp if rp.get("rope_type", "default") != "default" else None
        return float(theta), scaling
    return float(getattr(config, "rope_theta", 10000.0)), getattr(config, "rope_scaling", None)


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool):
        super().__init__()
        tp = get_tp_size()
        hidden = config.hidden_size
        self.total_heads = config.num_attention_heads
        self.total_kv_heads = getattr(config, "num_key_value_heads", None) or self.total_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // self.total_heads
        self.num_heads = divide(self.total_heads, tp, "num_attention_heads")
        self.num_kv_heads = divide(self.total_kv_heads, tp, "num_key_value_heads")
        self.qkv_proj = ColumnParallelLinear(
            hidden, qkv_sizes(self.total_heads, self.total_kv_heads, self.head_dim), bias=qkv_bias)
        self.o_proj = RowParallelLinear(self.total_heads * self.head_dim, hidden)
        theta, scaling = rope_params(config)
        self.rotary = RotaryEmbedding(self.head_dim, config.max_position_embeddings, theta,
                                      scaling)
        self.attn = Attention(layer_idx, self.num_heads, self.num_kv_heads, self.head_dim,
                              self.head_dim ** -0.5)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.qkv_proj(x)
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        # Rotary runs inside the attention layer, fused with the KV-cache write.
        return self.o_proj(self.attn(q, k, v, positions, self.rotary))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(hidden, [intermediate, intermediate])
        self.down_proj = RowParallelLinear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, qkv_bias: bool):
        super().__init__()
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.self_attn = LlamaAttention(config, layer_idx, qkv_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size)

    def forward(self, positions, x, residual: Optional[torch.Tensor]):
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaForCausalLM(nn.Module):
    """forward(input_ids [T], positions [T]) -> final hidden states [T, hidden]."""

    def __init__(self, config, first_layer_idx: int = 0):
        super().__init__()
        self.config = config
        qkv_bias = getattr(config, "model_type", "") == "qwen2" or getattr(
            config, "attention_bias", False)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, first_layer_idx + i, qkv_bias)
             for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, getattr(config, "rms_norm_eps", 1e-6))
        self.tie = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = None if self.tie else ParallelLMHead(config.vocab_size, config.hidden_size)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual)
        x, _ = self.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.embed_tokens if self.tie else self.lm_head
        return ParallelLMHead.logits(head, hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        modules = dict(self.named_modules())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.tie:
                continue
            for frag, (fused, part) in _STACKED.items():
                if f".{frag}." in name:
                    pname = name.replace(frag, fused)
                    module = modules[pname.rsplit(".", 1)[0]]
                    module.load_part(params[pname], part, tensor)
                    loaded.add(pname)
                    break
            else:
                if name not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter")
                module = modules[name.rsplit(".", 1)[0]]
                if hasattr(module, "load"):
                    module.load(params[name], tensor)
                else:
                    params[name].data.copy_(tensor)
                loaded.add(name)
        return loaded
