"""GPT-2: learned absolute positions, LayerNorm, GELU MLP, multi-head attention (no GQA)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vllm.distributed.parallel_state import divide, get_tp_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
from vllm.model_executor.layers.norms import LayerNorm
from vllm.model_executor.layers.vocab import ParallelLMHead, VocabParallelEmbedding


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        h = config.n_embd
        self.num_heads = divide(config.n_head, get_tp_size(), "n_head")
        self.head_dim = h // config.n_head
        inner = getattr(config, "n_inner", None) or 4 * h
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(h, eps)
        self.c_attn = ColumnParallelLinear(h, [h, h, h], bias=True)
        self.attn_c_proj = RowParallelLinear(h, h, bias=True)
        self.attn = Attention(layer_idx, self.num_heads, self.num_heads, self.head_dim,
                              self.head_dim ** -0.5)
        self.ln_2 = LayerNorm(h, eps)
        self.c_fc = ColumnParallelLinear(h, [inner], bias=True)
        self.mlp_c_proj = RowParallelLinear(inner, h, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        shape = (T, self.num_heads, self.head_dim)
        a = self.attn(q.reshape(shape), k.reshape(shape), v.reshape(shape))
        x = x + self.attn_c_proj(a)
        return x + self.mlp_c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config, first_layer_idx: int = 0):
        super().__init__()
        self.config = config
        self.wte = VocabParallelEmbedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.wpe.weight.requires_grad_(False)
        self.h = nn.ModuleList([GPT2Block(config, first_layer_idx + i)
                                for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return ParallelLMHead.logits(self.wte, hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, t in weights:
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue  # causal-mask buffers of old checkpoints; the head is tied to wte
            name = name.replace("attn.c_proj", "attn_c_proj").replace("mlp.c_proj", "mlp_c_proj")
            name = name.replace("attn.c_attn", "c_attn").replace("mlp.c_fc", "c_fc")
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter")
            mod_name, kind = name.rsplit(".", 1)
            module = self.get_submodule(mod_name)
            if kind == "weight" and mod_name.endswith(("c_attn", "c_fc", "c_proj")):
                t = t.t()  # HF GPT-2 uses Conv1D: weight stored as [in, out]
            if isinstance(module, ColumnParallelLinear):
                parts = t.chunk(len(module.output_sizes), dim=0)
                for i, part in enumerate(parts):
                    module.load_part(params[name], i, part)
            elif hasattr(module, "load"):
                module.load(params[name], t)
            else:
                params[name].data.copy_(t)
            loaded.add(name)
        return loaded
