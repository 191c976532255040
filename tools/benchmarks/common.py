"""Shared helpers of the benchmark scripts: run metadata, timing, model geometry."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch


def run_meta() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        sha = ""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": dev or "cpu", "torch": torch.__version__, "git_sha": sha,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print(f"wrote {path}")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        sync()
        self.s = time.perf_counter() - self.t0


def llama3_8b_folder(root: str) -> str:
    """A config-only folder with Llama-3-8B's shapes (weights come from load_format='dummy')."""
    from transformers import LlamaConfig
    path = os.path.join(root, "llama3-8b-shapes")
    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                          max_position_embeddings=8192, rope_theta=500000.0,
                          rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000,
                          eos_token_id=128001)
        cfg.architectures = ["LlamaForCausalLM"]
        cfg.save_pretrained(path)
    return path


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes_per_token(mc) -> int:
    el = torch.empty((), dtype=mc.dtype).element_size()
    return mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * el
