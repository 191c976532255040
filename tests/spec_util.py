"""Helpers for speculative-decoding tests: an EAGLE-1 head with random weights saved in the
published checkpoint layout next to a tiny target; a stand-in CUDA graph runner for the CPU."""
from __future__ import annotations

import json
import os
import random

import torch
from safetensors.torch import save_file

from vllm.v1.worker.cudagraph import CudaGraphRunner


class EagerReplay(CudaGraphRunner):
    """'Captures' by remembering run_forward; replay(Tp) runs it over the first Tp rows (what a
    CUDA graph replay computes), so the drafters' graph path runs on the CPU."""

    def capture(self, run_forward):  # noqa: D102
        self.fn = run_forward
        self.graphs = {T: None for T in self.sizes}
        self.captured = list(self.sizes)

    def replay(self, T_padded):
        self.num_replays += 1
        self.replayed = getattr(self, "replayed", []) + [T_padded]
        return self.fn(T_padded)


def save_random_eagle_head(target_path: str, out_dir: str, seed: int = 0) -> str:
    cfg = json.load(open(os.path.join(target_path, "config.json")))
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = h // nh
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    tensors = {
        "fc.weight": w(h, 2 * h),
        "layers.0.self_attn.q_proj.weight": w(nh * d, h),
        "layers.0.self_attn.k_proj.weight": w(nkv * d, h),
        "layers.0.self_attn.v_proj.weight": w(nkv * d, h),
        "layers.0.self_attn.o_proj.weight": w(h, nh * d),
        "layers.0.mlp.gate_proj.weight": w(inter, h),
        "layers.0.mlp.up_proj.weight": w(inter, h),
        "layers.0.mlp.down_proj.weight": w(h, inter),
        "layers.0.post_attention_layernorm.weight": torch.ones(h),
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    ecfg = dict(cfg, num_hidden_layers=1, architectures=["LlamaForCausalLM"])
    json.dump(ecfg, open(os.path.join(out_dir, "config.json"), "w"))
    return out_dir


def repetitive_prompts(n: int = 6, seed: int = 0) -> list[dict]:
    """Token-id prompts that repeat a random base 1-3 times (so n-gram lookup finds matches)."""
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(3, 256) for _ in range(rng.randint(2, 12))]
             * rng.randint(1, 3)} for _ in range(n)]


def staggered_greedy_params(n: int = 6):
    """Greedy params of different lengths, so requests finish at different steps (often inside
    a verify window)."""
    from vllm import SamplingParams
    return [SamplingParams(temperature=0.0, max_tokens=9 + 5 * i, ignore_eos=True)
            for i in range(n)]


def two_sample_chi2(a: list[int], b: list[int], bins: int) -> float:
    """Two-sample chi-square statistic of two samples of ints in [0, bins) (degrees of freedom:
    the bins either sample hits, minus one)."""
    import numpy as np
    ca, cb = np.bincount(a, minlength=bins), np.bincount(b, minlength=bins)
    keep = (ca + cb) > 0
    ca, cb = ca[keep].astype(float), cb[keep].astype(float)
    na, nb = ca.sum(), cb.sum()
    ka, kb = np.sqrt(nb / na), np.sqrt(na / nb)
    return float(((ka * ca - kb * cb) ** 2 / (ca + cb)).sum())
