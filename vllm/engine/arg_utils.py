"""EngineArgs: the user's engine arguments (same names as upstream), their CLI flags, and the
one place they are validated and turned into a VllmConfig."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from vllm.config import (CacheConfig, ModelConfig, ParallelConfig, SchedulerConfig,
                         SpecDecodeOptions, SpeculativeConfig, VllmConfig, resolve_dtype)
from vllm.platform import default_device
from vllm.v1.spec_decode.shipped import resolve_eagle_model

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass
class EngineArgs:
    model: str = DEFAULT_MODEL
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None
    block_size: int = 16
    enforce_eager: bool = False
    seed: int = 0
    tensor_parallel_size: int = 1
    load_format: str = "auto"
    speculative_config: Any = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_gpu_blocks_override: Optional[int] = None
    served_model_name: Optional[str] = None
    device: Optional[str] = None
    nwor_mode: Optional[str] = None      # None: VLLM_NWOR_MODE
    scv_mode: Optional[str] = None       # None: VLLM_SCV_MODE / platform default
    cpu_kvcache_space_gib: Optional[float] = None
    async_scheduling: Optional[bool] = None   # None: on for CUDA, off on the CPU
    data_parallel_size: int = 1
    distributed_init_method: Optional[str] = None   # None (spawn here) or "env://"

    def _check(self) -> None:
        def bad(name, why):
            raise ValueError(f"{name}={getattr(self, name)!r} is invalid: {why}")
        if not isinstance(self.model, str) or not self.model:
            bad("model", "must be a non-empty string")
        if not (isinstance(self.gpu_memory_utilization, (int, float))
                and 0 < self.gpu_memory_utilization <= 1):
            bad("gpu_memory_utilization", "must be in (0, 1]")
        for name in ("max_num_seqs", "block_size", "tensor_parallel_size",
                     "data_parallel_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be an int >= 1")
        for name in ("max_model_len", "max_num_batched_tokens", "num_gpu_blocks_override"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "must be an int >= 1 or None")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad("seed", "must be an int")
        if self.load_format not in ("auto", "dummy", "safetensors", "gguf"):
            bad("load_format", "expected 'auto', 'dummy', 'safetensors' or 'gguf'")
        if not isinstance(self.enforce_eager, bool):
            bad("enforce_eager", "must be a bool")
        if self.async_scheduling is not None and not isinstance(self.async_scheduling, bool):
            bad("async_scheduling", "must be a bool or None")
        if self.block_size > 256:
            bad("block_size", "must be <= 256")
        if self.distributed_init_method not in (None, "env://"):
            bad("distributed_init_method", "expected None (spawn the workers here) or 'env://'")

    def create_config(self) -> tuple[VllmConfig, Any]:
        """Returns (config, tokenizer)."""
        from vllm.model_executor.model_loader import loader
        self._check()
        device = torch.device(self.device) if self.device else default_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but CUDA is not available")
        path = loader.resolve(self.model)
        hf_config = loader.load_hf_config(path, self.load_format)
        tokenizer = loader.load_tokenizer(path, self.tokenizer)
        dtype = resolve_dtype(self.dtype, device)
        model_max = (getattr(hf_config, "max_position_embeddings", None)
                     or getattr(hf_config, "n_positions", None) or 2048)
        max_len = self.max_model_len or model_max
        if max_len > model_max:
            raise ValueError(f"max_model_len={max_len} exceeds the model's maximum "
                             f"({model_max})")
        mbt = self.max_num_batched_tokens or max(2048, min(max_len, 8192))
        if mbt < self.max_num_seqs and self.max_num_batched_tokens is not None:
            raise ValueError(f"max_num_batched_tokens={mbt} must be >= max_num_seqs="
                             f"{self.max_num_seqs}")
        spec = SpeculativeConfig.from_user(self.speculative_config, self.model,
                                           resolve_eagle_model)
        if spec is not None and spec.num_speculative_tokens + 1 > mbt:
            raise ValueError("max_num_batched_tokens is smaller than one verify step")
        tp = self.tensor_parallel_size
        heads = getattr(hf_config, "num_attention_heads", None) or hf_config.n_head
        if heads % tp:
            raise ValueError(f"tensor_parallel_size={tp} does not divide the model's "
                             f"{heads} attention heads")
        from vllm import envs
        cpu_space = (self.cpu_kvcache_space_gib if self.cpu_kvcache_space_gib is not None
                     else envs.get("VLLM_CPU_KVCACHE_SPACE"))
        name = self.served_model_name or self.model
        mc = ModelConfig(model=self.model, model_path=path, tokenizer=self.tokenizer,
                         hf_config=hf_config, dtype=dtype, max_model_len=max_len,
                         load_format=self.load_format, seed=self.seed, served_model_name=name)
        cfg = VllmConfig(
            model_config=mc,
            cache_config=CacheConfig(self.block_size, self.gpu_memory_utilization,
                                     self.num_gpu_blocks_override, self.enable_prefix_caching,
                                     cpu_space),
            scheduler_config=SchedulerConfig(
                self.max_num_seqs, mbt, max_len, self.enable_chunked_prefill,
                async_scheduling=(device.type == "cuda" if self.async_scheduling is None
                                  else self.async_scheduling)),
            parallel_config=ParallelConfig(tp, self.data_parallel_size,
                                           self.distributed_init_method),
            speculative_config=spec,
            spec_options=SpecDecodeOptions.resolve(self.nwor_mode, self.scv_mode),
            device=str(device), enforce_eager=self.enforce_eager)
        return cfg, tokenizer

    # ------------------------------------------------------------------ CLI
    @staticmethod
    def add_cli_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--tokenizer", default=None)
        p.add_argument("--dtype", default="auto")
        p.add_argument("--max-model-len", type=int, default=None)
        p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
        p.add_argument("--max-num-seqs", type=int, default=256)
        p.add_argument("--max-num-batched-tokens", type=int, default=None)
        p.add_argument("--block-size", type=int, default=16)
        p.add_argument("--enforce-eager", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        p.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                       help="engine replicas (one per GPU, or per tensor-parallel group) "
                            "behind one server, requests spread by load")
        p.add_argument("--distributed-init-method", default=None, choices=["env://"],
                       help="'env://': ranks started by torchrun (RANK, WORLD_SIZE, "
                            "MASTER_ADDR, MASTER_PORT); see docs/distributed.md")
        p.add_argument("--load-format", default="auto")
        p.add_argument("--speculative-config", type=json.loads, default=None,
                       help="JSON, e.g. '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'")
        p.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching",
                       action="store_false")
        p.add_argument("--num-gpu-blocks-override", type=int, default=None)
        p.add_argument("--served-model-name", default=None)
        p.add_argument("--device", default=None)
        p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                       help="schedule the next step while the GPU runs this one (default: on "
                            "for CUDA)")
        return p

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})
