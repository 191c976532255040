"""Linear layers with tensor parallelism (Megatron style).

Column-parallel layers shard the output features (no communication); row-parallel layers shard
the input features and all-reduce the partial sums. Weight loaders take the full Hugging Face
tensor and keep this rank's shard, so checkpoints need no resharding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vllm.distributed.parallel_state import divide, get_tp_rank, get_tp_size, tp_all_reduce


class ColumnParallelLinear(nn.Module):
    """y = x W^T, W sharded by rows (output features). ``output_sizes`` lists the fused parts
    (e.g. q, k, v or gate, up) so each part is sharded separately."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = False):
        super().__init__()
        tp = get_tp_size()
        self.output_sizes = list(output_sizes)
        self.shard_sizes = [divide(n, tp, "output features") for n in output_sizes]
        self.weight = nn.Parameter(torch.empty(sum(self.shard_sizes), input_size),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(sum(self.shard_sizes)), requires_grad=False)
                     if bias else None)

    def load_part(self, param: torch.Tensor, part: int, full: torch.Tensor) -> None:
        start = sum(self.shard_sizes[:part])
        n = self.shard_sizes[part]
        shard = full.narrow(0, get_tp_rank() * n, n)
        param.data.narrow(0, start, n).copy_(shard)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_shard W_shard^T) + b; W sharded by columns (input features)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.in_shard = divide(input_size, get_tp_size(), "input features")
        self.weight = nn.Parameter(torch.empty(output_size, self.in_shard), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False) if bias else None

    def load(self, param: torch.Tensor, full: torch.Tensor) -> None:
        if param is self.bias:
            param.data.copy_(full)
            return
        param.data.copy_(full.narrow(1, get_tp_rank() * self.in_shard, self.in_shard))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = tp_all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def qkv_sizes(num_heads: int, num_kv_heads: int, head_dim: int) -> list[int]:
    if num_kv_heads < get_tp_size():
        raise ValueError(f"num_key_value_heads={num_kv_heads} < tensor_parallel_size="
                         f"{get_tp_size()} is not supported")
    return [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]


def default_init_(module: nn.Module, seed: Optional[int] = None) -> None:
    """Random weights for load_format='dummy': small uniform values so activations stay finite."""
    gens: dict = {}
    for p in module.parameters():
        dev = p.device
        if dev not in gens:      # draw on the parameter's device: 8B parameters in seconds
            gens[dev] = torch.Generator(device=dev)
            gens[dev].manual_seed(0 if seed is None else seed)
        p.data.uniform_(-0.02, 0.02, generator=gens[dev])
