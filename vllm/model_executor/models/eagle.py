"""EAGLE-1 draft head (Li et al. 2024), in the published checkpoint layout:
fc: Linear(2H -> H) over [token embedding, target hidden state], then one Llama decoder layer
(its input RMSNorm is absent in EAGLE-1 checkpoints), no final norm. The target's embedding and
LM head are shared."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from vllm.model_executor.models.llama import _STACKED, LlamaAttention, LlamaMLP
from vllm.model_executor.layers.norms import RMSNorm


class EagleHead(nn.Module):
    def __init__(self, config, fc_bias: bool = False):
        super().__init__()
        h = config.hidden_size
        eps = getattr(config, "rms_norm_eps", 1e-6)
        self.fc = nn.Linear(2 * h, h, bias=fc_bias)
        self.fc.weight.requires_grad_(False)
        self.self_attn = LlamaAttention(config, 0, qkv_bias=False)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.mlp = LlamaMLP(h, config.intermediate_size)
        self.input_layernorm = None     # created by load_weights if the checkpoint has one
        self.eps = eps

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        # embeds/hidden [T, H] -> predicted next feature [T, H]
        x = self.fc(torch.cat([embeds, hidden.to(embeds.dtype)], dim=-1))
        residual = x
        if self.input_layernorm is not None:
            x = self.input_layernorm(x)
        x = self.self_attn(positions, x)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x) + residual

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded: set[str] = set()
        for name, t in weights:
            name = name.removeprefix("model.")
            if name.startswith(("embed_tokens.", "lm_head.", "norm.")):
                continue            # shared with the target
            if name == "fc.bias" and self.fc.bias is None:
                self.fc.bias = nn.Parameter(torch.empty_like(t, dtype=self.fc.weight.dtype,
                                                             device=self.fc.weight.device),
                                            requires_grad=False)
            name = name.replace("layers.0.", "")
            if name == "input_layernorm.weight":
                w = self.fc.weight
                self.input_layernorm = RMSNorm(t.shape[0], self.eps).to(w.device, w.dtype)
            params = dict(self.named_parameters())
            modules = dict(self.named_modules())
            for frag, (fused, part) in _STACKED.items():
                if f".{frag}." in name:
                    pname = name.replace(frag, fused)
                    modules[pname.rsplit(".", 1)[0]].load_part(params[pname], part, t)
                    loaded.add(pname)
                    break
            else:
                if name not in params:
                    raise ValueError(f"EAGLE checkpoint tensor {name!r} has no parameter")
                mod = modules[name.rsplit(".", 1)[0]]
                mod.load(params[name], t) if hasattr(mod, "load") else params[name].data.copy_(t)
                loaded.add(name)
        return loaded
