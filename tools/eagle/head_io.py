"""Build a fresh EAGLE head for a target (or load a saved one to train further) and save one in
the published EAGLE-1 checkpoint layout (the names EagleHead.load_weights reads): config.json +
model.safetensors (bf16) + SHA256SUMS."""
from __future__ import annotations

import copy
import json
import os

import torch
from safetensors.torch import save_file

from vllm.model_executor.model_loader import loader
from vllm.model_executor.models.eagle import EagleHead
from vllm.v1.spec_decode.shipped import (CHECKSUM_FILE, REQUIRED_FILES, sha256_file,
                                         verify_checksums, write_checksums)


def head_config(target_cfg):
    """The head's config: the target's, with one layer."""
    cfg = copy.deepcopy(target_cfg)
    cfg.num_hidden_layers = 1
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def new_head(target_cfg, device, seed: int = 0) -> EagleHead:
    """A trainable fp32 head. Init (our choice): fc passes the target hidden state through
    (identity on its second half, small noise on the embedding half), so the head starts by
    predicting "the next feature = this one"; other matrices N(0, 0.02), output projections
    scaled by 1/2 (they add onto the residual); norms at 1."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device(device):
            head = EagleHead(head_config(target_cfg))
    finally:
        torch.set_default_dtype(prev)
    g = torch.Generator(device="cpu").manual_seed(seed)
    h = target_cfg.hidden_size
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
                continue
            std = 0.01 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)
        head.fc.weight[:, h:].copy_(torch.eye(h))
    for p in head.parameters():
        p.requires_grad_(True)
    return head


def load_head(target_cfg, head_dir: str, device, seed: int = 0) -> tuple[EagleHead, dict]:
    """A trainable fp32 head holding a saved head's weights (upstream EAGLE-1 layout, read the
    way the engine reads it: EagleHead.load_weights), to continue training from. The folder's
    SHA256SUMS is checked when it has one. Returns (head, {file: sha256} of the folder's files)."""
    verify_checksums(head_dir)
    with open(os.path.join(head_dir, "config.json")) as f:
        saved = json.load(f)
    for key in ("hidden_size", "vocab_size"):
        if saved.get(key) != getattr(target_cfg, key):
            raise ValueError(f"init head {head_dir!r}: {key} {saved.get(key)} != the target's "
                             f"{getattr(target_cfg, key)}")
    head = new_head(target_cfg, device, seed)      # every parameter is then overwritten
    loaded = head.load_weights(loader._safetensors_weights(head_dir))
    missing = {n for n, _ in head.named_parameters()} - loaded
    if missing:
        raise ValueError(f"init head {head_dir!r} lacks {sorted(missing)}")
    for p in head.parameters():
        p.requires_grad_(True)
    files = sorted(set(REQUIRED_FILES) | {CHECKSUM_FILE})
    return head, {n: sha256_file(os.path.join(head_dir, n)) for n in files
                  if os.path.isfile(os.path.join(head_dir, n))}


def head_state_dict(head: EagleHead) -> dict[str, torch.Tensor]:
    """Tensors under the upstream EAGLE-1 names, q/k/v and gate/up split again."""
    a, m = head.self_attn, head.mlp
    q, k, v = a.qkv_proj.weight.split(a.qkv_proj.output_sizes, dim=0)
    gate, up = m.gate_up_proj.weight.split(m.gate_up_proj.output_sizes, dim=0)
    out = {"fc.weight": head.fc.weight,
           "layers.0.self_attn.q_proj.weight": q, "layers.0.self_attn.k_proj.weight": k,
           "layers.0.self_attn.v_proj.weight": v,
           "layers.0.self_attn.o_proj.weight": a.o_proj.weight,
           "layers.0.mlp.gate_proj.weight": gate, "layers.0.mlp.up_proj.weight": up,
           "layers.0.mlp.down_proj.weight": m.down_proj.weight,
           "layers.0.post_attention_layernorm.weight": head.post_attention_layernorm.weight}
    if head.fc.bias is not None:
        out["fc.bias"] = head.fc.bias
    if head.input_layernorm is not None:
        out["layers.0.input_layernorm.weight"] = head.input_layernorm.weight
    return out


def save_head(head: EagleHead, target_cfg, out_dir: str, dtype=torch.bfloat16,
              extra_config: dict | None = None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    tensors = {n: t.detach().to("cpu", dtype).contiguous() for n, t in head_state_dict(head).items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)    # package data: readable
    cfg = head_config(target_cfg).to_dict()
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    cfg.update(extra_config or {})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)
    write_checksums(out_dir)
    return out_dir
